//! `mkbundle KIND DIR [HOSTDIR]`: makes the busybox OCI bundles of `bundles/` for the runc
//! tests. The rootfs comes from `bundles/busybox/build-rootfs.sh`; `config.json` is what
//! `runc spec` writes, edited as a typed OCI runtime spec (oci-spec), never written by hand.
//!
//! Kinds (every one runs a counter loop as PID 1, busybox `sh`):
//! - `pipe`: `terminal: false`; the counter goes to stdout (a pipe when the caller makes
//!   one) and to `/dev/shm/count`;
//! - `tty`: `terminal: true`, an interactive `sh` on the console (needs `--console-socket`);
//! - `binds`: `/data` ← `HOSTDIR/cdata` (rbind, rw), `/data/nested` ← `HOSTDIR/cdata2`
//!   (bind, ro) and a read-only file bind `/etc/cryo.txt` ← `HOSTDIR/file.txt`; the counter
//!   goes to `/data/count.txt` (so to the host);
//! - `shm`: `/dev/shm` a tmpfs holding `/dev/shm/seq` (written once at start) and the counter
//!   in `/dev/shm/count`;
//! - `netns`: `pipe` in the existing network namespace at path HOSTDIR (e.g.
//!   `/run/netns/NAME`): runc then tells the checkpoint it is external (`extRootNetNS`).
//! - `pod`: `pipe` as a pod member: in the PID, IPC and network namespaces at HOSTDIR/pid,
//!   HOSTDIR/ipc and HOSTDIR/net (e.g. `/proc/PID/ns` of another container's init), so not
//!   PID 1 there; runc saves the PID and network namespaces as external and joins the IPC one
//!   at restore (`join_ns`);
//! - `overlay`: `pipe` on an overlayfs root: the busybox tree goes to `DIR/lower` and
//!   `DIR/rootfs` is left empty (not read-only) for the caller to mount an overlay on
//!   (`lowerdir=DIR/lower`, upper and work directories of its own), as podman's overlay
//!   storage driver and containerd's overlay snapshotter make a root. The loop holds files of
//!   the overlay open: fd 3 reads `/etc/passwd` (a lower file), fd 4 appends the counter to
//!   `/log.txt` (made in the upper layer), fd 5 reads `/tmp/gone` (made, then deleted), fd 6
//!   reads `/etc/group` (a lower file, deleted). Its `org.criu.config` annotation names
//!   `DIR/criu.conf`, which says `link-remap` (what CRIU needs for fd 6 too);
//! - `tcp`: a TCP echo server (busybox `nc -ll -p 7000 -e cat`: one `cat` per connection)
//!   in the existing network namespace at path HOSTDIR.

use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, Spec};

/// The counter loop: `$1` is the file the count goes to, stdout gets it too.
const LOOP: &str = "i=0; while true; do i=$((i+1)); echo $i; echo $i > \"$1\"; usleep 200000; done";

fn die(msg: String) -> ! {
    eprintln!("mkbundle: {msg}");
    std::process::exit(1)
}

fn run(cmd: &mut Command) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => die(format!("{cmd:?} failed: {s}")),
        Err(e) => die(format!("{cmd:?}: {e}")),
    }
}

fn bind(dest: &str, src: &Path, opts: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap_or_else(|e| die(format!("mount {dest}: {e}")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, dir) = match args.as_slice() {
        [k, d, ..] => (k.as_str(), PathBuf::from(d)),
        _ => die(
            "usage: mkbundle pipe|tty|binds|shm|overlay|netns|pod|tcp DIR [HOSTDIR|NETNS]".into(),
        ),
    };
    let hostdir = args.get(2).map(PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(format!("{}: {e}", dir.display())));
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|e| die(format!("{}: {e}", dir.display())));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/busybox/build-rootfs.sh");
    let tree = dir.join(if kind == "overlay" { "lower" } else { "rootfs" });
    if !tree.join("bin/busybox").exists() {
        run(Command::new("bash").arg(&script).arg(&tree));
    }
    std::fs::create_dir_all(dir.join("rootfs"))
        .unwrap_or_else(|e| die(format!("{}: {e}", dir.join("rootfs").display())));
    let config = dir.join("config.json");
    let _ = std::fs::remove_file(&config);
    run(Command::new("runc").arg("spec").arg("--bundle").arg(&dir));
    let mut spec =
        Spec::load(&config).unwrap_or_else(|e| die(format!("{}: {e}", config.display())));

    let sh = |body: &str, file: &str| -> Vec<String> {
        ["sh", "-c", body, "counter", file]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let (terminal, argv, extra): (bool, Vec<String>, Vec<Mount>) = match kind {
        "pipe" | "netns" | "pod" => (false, sh(LOOP, "/dev/shm/count"), vec![]),
        "overlay" => (
            false,
            sh(
                "echo ghost > /tmp/gone; exec 3</etc/passwd 4>>/log.txt 5</tmp/gone \
                 6</etc/group; rm /tmp/gone /etc/group; i=0; while true; do i=$((i+1)); echo $i; echo $i > \"$1\"; \
                 echo $i >&4; usleep 200000; done",
                "/dev/shm/count",
            ),
            vec![],
        ),
        "tty" => (true, vec!["sh".into()], vec![]),
        "tcp" => (
            false,
            ["nc", "-ll", "-p", "7000", "-e", "cat"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            vec![],
        ),
        "binds" => {
            let h = hostdir
                .clone()
                .unwrap_or_else(|| die("binds needs HOSTDIR".into()));
            for d in ["cdata/nested", "cdata2"] {
                std::fs::create_dir_all(h.join(d))
                    .unwrap_or_else(|e| die(format!("{}: {e}", h.join(d).display())));
            }
            std::fs::write(h.join("cdata2/ro.txt"), "read-only bind\n")
                .and_then(|_| std::fs::write(h.join("file.txt"), "file bind\n"))
                .unwrap_or_else(|e| die(format!("{}: {e}", h.display())));
            // The mount point of the file bind, in the (read-only) rootfs.
            std::fs::write(dir.join("rootfs/etc/cryo.txt"), "")
                .unwrap_or_else(|e| die(format!("rootfs/etc/cryo.txt: {e}")));
            (
                false,
                sh(LOOP, "/data/count.txt"),
                vec![
                    bind("/data", &h.join("cdata"), &["rbind", "rw"]),
                    bind("/data/nested", &h.join("cdata2"), &["bind", "ro"]),
                    bind("/etc/cryo.txt", &h.join("file.txt"), &["bind", "ro"]),
                ],
            )
        }
        "shm" => (
            false,
            sh(
                &format!("seq 1 20000 > /dev/shm/seq; {LOOP}"),
                "/dev/shm/count",
            ),
            vec![],
        ),
        other => die(format!("unknown bundle kind {other:?}")),
    };

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(terminal));
    process.set_args(Some(argv));
    spec.set_process(Some(process));
    spec.set_hostname(Some(format!("cryo-{kind}")));
    if kind == "overlay" {
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
        let conf = dir.join("criu.conf");
        std::fs::write(&conf, "link-remap\n")
            .unwrap_or_else(|e| die(format!("{}: {e}", conf.display())));
        let mut notes = spec.annotations().clone().unwrap_or_default();
        notes.insert("org.criu.config".into(), conf.display().to_string());
        spec.set_annotations(Some(notes));
    }
    if kind == "netns" || kind == "tcp" {
        let path = hostdir
            .clone()
            .unwrap_or_else(|| die("netns needs the namespace's path".into()));
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut nss = linux.namespaces().clone().unwrap_or_default();
        for ns in nss.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(path.clone()));
            }
        }
        linux.set_namespaces(Some(nss));
        spec.set_linux(Some(linux));
    }
    if kind == "pod" {
        let base = hostdir
            .clone()
            .unwrap_or_else(|| die("pod needs the directory of the namespaces to join".into()));
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut nss = linux.namespaces().clone().unwrap_or_default();
        for ns in nss.iter_mut() {
            let name = match ns.typ() {
                LinuxNamespaceType::Pid => "pid",
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Network => "net",
                _ => continue,
            };
            ns.set_path(Some(base.join(name)));
        }
        linux.set_namespaces(Some(nss));
        spec.set_linux(Some(linux));
    }
    if !extra.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.extend(extra);
        spec.set_mounts(Some(mounts));
    }
    spec.save(&config)
        .unwrap_or_else(|e| die(format!("{}: {e}", config.display())));
    println!("{}", dir.display());
}
