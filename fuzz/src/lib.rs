//! cryo-fuzz: structure-aware fuzzing of everything in cryo that reads hostile images, on
//! stable Rust and in-process (no libFuzzer, no nightly).
//!
//! An input is a whole images directory: a real image set (seeds from `cryo dump` of test
//! programs and CRIU's fixture, `integration/fuzz-seeds.sh`) with one to a few files mutated
//! by `mutate` (framing, protobuf fields, hostile strings and sizes, entries spliced across
//! images), sometimes a mount namespace added with hostile mount points, and its
//! `cryo-manifest.json` dropped, re-signed to match the mutants (so they get past the
//! digest check) or itself mutated. Each input runs, in this process, through:
//! - the decoders: every image file through `ImageDir::read_opt` / `read_with_data` /
//!   `read_pagemap` with its message type (and `read_ipc_msgs`), and `cryo show`'s generic
//!   decoding;
//! - the manifest: `Manifest::load` and `verify`;
//! - restore planning, `restore::plan` (everything before the first fork: the tree, the
//!   cgroup check in `none` mode, the trampoline, the fd objects, the mount checks), then
//!   `kinds::mounts::resolve_dry` of a mount plan inside a temporary `--root` with planted
//!   symlinks (`..`, absolute, into /proc), which must stay inside it.
//!
//! A panic is a finding (caught with `catch_unwind`); hangs and allocation blow-ups are
//! caught by the supervisor in `main.rs` (per-input watchdog, capped allocator).

// No `unsafe` in the fuzzer (the lints are the workspace's; this one is the crate's own).
#![deny(unsafe_code)]

pub mod mutate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cryo::image::{self, pb, ImageDir};
use fastrand::Rng;
use prost::Message;

/// One image set: file name → bytes.
pub type Files = Vec<(String, Vec<u8>)>;

/// The seed image sets.
pub struct Corpus {
    pub sets: Vec<(String, Files)>,
}

/// Largest image a mutant may grow to (a bigger file is not a more hostile one).
const MAX_FILE: usize = 1 << 20;

impl Corpus {
    /// Loads every image set below `dirs` (a directory holding images, or holding such
    /// directories). Raw page data and tar archives are left out.
    pub fn load(dirs: &[PathBuf]) -> std::io::Result<Corpus> {
        let mut sets = Vec::new();
        for d in dirs {
            let mut sub: Vec<PathBuf> = std::fs::read_dir(d)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            sub.sort();
            if sub.is_empty() {
                sub.push(d.clone());
            }
            for s in sub {
                let files = load_set(&s)?;
                if !files.is_empty() {
                    sets.push((s.display().to_string(), files));
                }
            }
        }
        Ok(Corpus { sets })
    }
}

fn load_set(d: &Path) -> std::io::Result<Files> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(d)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !p.is_file()
            || name.starts_with("pages-")
            || name.ends_with(".tar.gz.img")
            || name.ends_with(".log")
            || name == "README.md"
        {
            continue;
        }
        files.push((name, std::fs::read(&p)?));
    }
    files.sort();
    // A seed's manifest may list raw files the seed does not carry: re-sign it.
    if files.iter().any(|(n, _)| n == image::manifest::NAME) {
        resign(&mut files);
    }
    Ok(files)
}

/// Rewrites `cryo-manifest.json` to match `files` exactly.
pub fn resign(files: &mut Files) {
    files.retain(|(n, _)| n != image::manifest::NAME);
    let mut m = image::Manifest::default();
    for (n, b) in files.iter() {
        m.files
            .insert(n.clone(), image::manifest::FileDigest::of(b));
    }
    files.push((
        image::manifest::NAME.to_string(),
        serde_json::to_vec(&m).expect("manifest serializes"),
    ));
}

/// A generated input: the image set and which files were changed. Most inputs are a single
/// mutated image (`whole` false), decoded from memory; the others are a whole directory,
/// written out and planned from.
pub struct Input {
    pub seed: String,
    pub files: Files,
    pub changed: Vec<String>,
    pub whole: bool,
}

/// One input in this many is a whole image set run through restore planning.
const WHOLE_EVERY: u8 = 8;

/// Input number `index` of run `seed`: deterministic, so any finding can be regenerated.
pub fn generate(corpus: &Corpus, seed: u64, index: u64) -> Input {
    let mut rng = Rng::with_seed(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (name, set) = &corpus.sets[rng.usize(..corpus.sets.len())];
    if rng.u8(..WHOLE_EVERY) != 0 {
        let (n, b) = &set[rng.usize(..set.len())];
        let (dn, donor) = &corpus.sets[rng.usize(..corpus.sets.len())];
        let donor = &donor[rng.usize(..donor.len())].1;
        let mut b = b.clone();
        for _ in 0..if rng.u8(..4) == 0 { rng.usize(2..5) } else { 1 } {
            if n == image::manifest::NAME {
                mutate::mutate_manifest(&mut b, &mut rng);
            } else {
                mutate::mutate_image(n, &mut b, &mut rng, &[donor]);
            }
            b.truncate(MAX_FILE);
        }
        return Input {
            seed: format!("{name} (donor {dn})"),
            files: vec![(n.clone(), b)],
            changed: vec![n.clone()],
            whole: false,
        };
    }
    let mut files = set.clone();
    let mut changed = Vec::new();
    let had_manifest = files.iter().any(|(n, _)| n == image::manifest::NAME);
    files.retain(|(n, _)| n != image::manifest::NAME);
    if rng.u8(..6) == 0 {
        add_mount_ns(&mut files, &mut rng);
        changed.push("mountpoints".into());
    }
    let donors: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let (_, s) = &corpus.sets[rng.usize(..corpus.sets.len())];
            s[rng.usize(..s.len())].1.clone()
        })
        .collect();
    let donors: Vec<&[u8]> = donors.iter().map(|d| d.as_slice()).collect();
    let n = if rng.u8(..4) == 0 { rng.usize(2..6) } else { 1 };
    for _ in 0..n {
        if files.is_empty() {
            break;
        }
        let k = rng.usize(..files.len());
        match rng.u8(..40) {
            // The file is gone.
            0 => {
                let (n, _) = files.remove(k);
                changed.push(n);
            }
            // Replaced by another set's file of the same name or kind.
            1 => {
                let (_, other) = &corpus.sets[rng.usize(..corpus.sets.len())];
                let kind = image::kind_of(&files[k].0).map(|k| k.name);
                if let Some((_, b)) = other
                    .iter()
                    .find(|(n, _)| image::kind_of(n).map(|k| k.name) == kind)
                {
                    files[k].1 = b.clone();
                    changed.push(files[k].0.clone());
                }
            }
            _ => {
                let (n, b) = &mut files[k];
                mutate::mutate_image(n, b, &mut rng, &donors);
                b.truncate(MAX_FILE);
                changed.push(n.clone());
            }
        }
    }
    match rng.u8(..10) {
        0..=4 => {}
        5..=8 => resign(&mut files),
        _ => {
            resign(&mut files);
            let m = files.last_mut().expect("manifest");
            mutate::mutate_manifest(&mut m.1, &mut rng);
            changed.push(m.0.clone());
        }
    }
    let _ = had_manifest;
    Input {
        seed: name.clone(),
        files,
        changed,
        whole: true,
    }
}

/// Gives the set a mount namespace: the root task's `ids` names one other than cryo's, and
/// `mountpoints-ID.img` holds a plan with hostile mount points and bind roots.
fn add_mount_ns(files: &mut Files, rng: &mut Rng) {
    let Some(root_pid) = files
        .iter()
        .find(|(n, _)| n == "pstree.img")
        .and_then(|(_, b)| {
            let e = std::panic::catch_unwind(|| {
                image::entries(Path::new("pstree.img"), image::PSTREE, b)
            })
            .ok()?
            .ok()?;
            pb::PstreeEntry::decode(e.first()?.1).ok()
        })
        .map(|p| p.pid)
    else {
        return;
    };
    let ids_name = format!("ids-{root_pid}.img");
    let Some((_, ids)) = files.iter_mut().find(|(n, _)| *n == ids_name) else {
        return;
    };
    let Some(mut e) = std::panic::catch_unwind(|| image::entries(Path::new(""), image::IDS, ids))
        .ok()
        .and_then(|r| r.ok())
        .and_then(|v| pb::TaskKobjIdsEntry::decode(v.first()?.1).ok())
    else {
        return;
    };
    let id = 0x7000_0000 | rng.u32(..1000);
    e.mnt_ns_id = Some(id);
    *ids = frame(image::IDS, &[e]);
    let paths = [
        "/proc",
        "/sys",
        "/tmp",
        "/dev",
        "/dev/pts",
        "/data",
        "/up/x",
        "/abs/etc",
        "/magic/x",
        "/out/x",
        "/../../x",
        "/proc/self/cwd/x",
        "/proc/1/root/x",
        "/a/b/c",
        "x",
        "",
    ];
    let kinds = [
        ("proc", 0x9fa0u32),
        ("sysfs", 0x6265_6572),
        ("tmpfs", 0x0102_1994),
        ("devpts", 0x1cd1),
        ("mqueue", 0x1980_0202),
        ("ext4", 0xef53),
    ];
    let mut entries = vec![pb::MntEntry {
        fstype: 0xef53,
        mnt_id: 1,
        root_dev: 1,
        parent_mnt_id: 0,
        flags: 0,
        root: "/".into(),
        mountpoint: "/".into(),
        source: "/dev/root".into(),
        options: String::new(),
        fsname: Some("ext4".into()),
        ..Default::default()
    }];
    for i in 0..rng.usize(1..6) {
        let (fsname, fstype) = kinds[rng.usize(..kinds.len())];
        let bind = rng.u8(..3) == 0;
        entries.push(pb::MntEntry {
            fstype,
            mnt_id: 2 + u32::try_from(i).expect("a few mounts"),
            root_dev: if bind {
                1
            } else {
                10 + u32::try_from(i).expect("a few mounts")
            },
            parent_mnt_id: 1,
            flags: rng.u32(..),
            root: if bind {
                paths[rng.usize(..paths.len())].into()
            } else {
                "/".into()
            },
            mountpoint: paths[rng.usize(..paths.len())].into(),
            source: fsname.into(),
            options: String::new(),
            fsname: Some(fsname.into()),
            ext_key: (rng.u8(..8) == 0).then(|| "key".into()),
            ..Default::default()
        });
    }
    files.retain(|(n, _)| !n.starts_with("mountpoints-"));
    files.push((
        format!("mountpoints-{id}.img"),
        frame(image::MNTS, &entries),
    ));
}

/// An image of `kind` holding `entries`, framed as cryo writes it.
pub fn frame<M: Message>(kind: image::Kind, entries: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    match kind.head {
        image::Head::Common(m) => {
            out.extend_from_slice(&image::IMG_COMMON_MAGIC.to_ne_bytes());
            out.extend_from_slice(&m.to_ne_bytes());
        }
        image::Head::Bare(m) => out.extend_from_slice(&m.to_ne_bytes()),
        image::Head::Service(m) => {
            out.extend_from_slice(&image::IMG_SERVICE_MAGIC.to_ne_bytes());
            out.extend_from_slice(&m.to_ne_bytes());
        }
    }
    for e in entries {
        out.extend_from_slice(
            &u32::try_from(e.encoded_len())
                .expect("small entries")
                .to_ne_bytes(),
        );
        e.encode(&mut out).expect("Vec grows");
    }
    out
}

/// Where an input is run: an images directory and a `--root` with planted symlinks, both
/// private to one worker, with what is on disk remembered so only changed files are written.
pub struct Workdir {
    pub images: PathBuf,
    pub root: PathBuf,
    on_disk: HashMap<String, u64>,
    runs: u64,
}

fn hash(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Workdir {
    pub fn new(base: &Path) -> std::io::Result<Workdir> {
        let _ = std::fs::remove_dir_all(base);
        let images = base.join("img");
        std::fs::create_dir_all(&images)?;
        let w = Workdir {
            images,
            root: base.join("root"),
            on_disk: HashMap::new(),
            runs: 0,
        };
        w.plant_root()?;
        Ok(w)
    }

    /// The `--root` the mount plans resolve in: symlinks that lead out of it if followed
    /// naively (`..`, absolute, into /proc), and a sentinel directory beside it.
    fn plant_root(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&self.root);
        std::fs::create_dir_all(self.root.join("etc"))?;
        std::fs::create_dir_all(self.root.join("proc"))?;
        let up = "../".repeat(16);
        std::os::unix::fs::symlink(up, self.root.join("up"))?;
        std::os::unix::fs::symlink("/", self.root.join("abs"))?;
        std::os::unix::fs::symlink("/proc/self/root", self.root.join("magic"))?;
        std::os::unix::fs::symlink("/tmp", self.root.join("out"))?;
        Ok(())
    }

    /// Puts `files` on disk as the images directory.
    pub fn write(&mut self, files: &Files) -> std::io::Result<()> {
        let mut keep = HashMap::new();
        for (n, b) in files {
            let h = hash(b);
            if self.on_disk.get(n) != Some(&h) {
                std::fs::write(self.images.join(n), b)?;
            }
            keep.insert(n.clone(), h);
        }
        for n in self.on_disk.keys() {
            if !keep.contains_key(n) {
                let _ = std::fs::remove_file(self.images.join(n));
            }
        }
        self.on_disk = keep;
        Ok(())
    }
}

/// How far inputs got: whole image sets run, planned without error, mount plans resolved.
pub static REACHED: [std::sync::atomic::AtomicU64; 3] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

fn reached(i: usize) {
    REACHED[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// `REACHED` as text.
pub fn reached_summary() -> String {
    let r: Vec<u64> = REACHED
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    format!(
        "{} whole image sets, {} planned without error, {} mount plans resolved",
        r[0], r[1], r[2]
    )
}

/// A violated property other than a panic (which `catch_unwind` reports).
#[derive(Debug)]
pub struct Violation(pub String);

/// Runs one input through every target. Errors from cryo are expected (hostile input);
/// a panic, or a `Violation`, is a finding.
pub fn run_input(w: &mut Workdir, input: &Input) -> Result<(), Violation> {
    if !input.whole {
        for (name, bytes) in &input.files {
            if name == image::manifest::NAME {
                let _ = serde_json::from_slice::<image::Manifest>(bytes);
            } else {
                decode_bytes(name, bytes);
            }
        }
        return Ok(());
    }
    reached(0);
    w.write(&input.files)
        .map_err(|e| Violation(format!("cannot write the input: {e}")))?;
    w.runs += 1;
    if w.runs.is_multiple_of(512) {
        // resolve_dry makes the mount points it needs: start from a clean root now and then.
        w.plant_root()
            .map_err(|e| Violation(format!("cannot reset the root: {e}")))?;
    }
    let dir = ImageDir::open(&w.images).map_err(|e| Violation(format!("open: {e}")))?;
    // Decoders: the changed files (the others decode as their seed did).
    for (name, bytes) in &input.files {
        if input.changed.iter().any(|c| c == name) || input.changed.is_empty() {
            decode(&dir, name, bytes);
        }
    }
    if let Ok(Some(m)) = image::Manifest::load(&w.images) {
        let _ = m.verify(&w.images, 1);
    }
    let opts = cryo::restore::RestoreOpts {
        mounts: cryo::kinds::mounts::MountOpts {
            root: Some(w.root.clone()),
            external: HashMap::from([("key".to_string(), w.root.join("etc"))]),
            ..Default::default()
        },
        cgroups: cryo::kinds::cgroup::CgOpts {
            mode: cryo::kinds::cgroup::Mode::None,
            ..Default::default()
        },
        ..Default::default()
    };
    let plan = match cryo::restore::plan(&dir, &opts) {
        Ok(p) => p,
        Err(_) => return Ok(()),
    };
    reached(1);
    // What a child keeps from its parent (pure arithmetic on hostile VMAs).
    for t in &plan.tasks {
        if let Some(p) = plan.tasks.iter().find(|p| p.pid == t.pstree.ppid) {
            let _ = cryo::kinds::memory::cow_kept(&p.mm, &t.mm);
        }
    }
    if let Some((entries, root)) = &plan.mounts {
        let canon = root
            .canonicalize()
            .map_err(|e| Violation(format!("root: {e}")))?;
        if let Ok(paths) = cryo::kinds::mounts::resolve_dry(root, entries, &opts.mounts.external) {
            reached(2);
            let ext = opts.mounts.external["key"].clone();
            for p in paths {
                if !p.starts_with(&canon) && !p.starts_with(&ext) {
                    return Err(Violation(format!(
                        "a mount path resolved outside --root: {}",
                        p.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Decodes image `name` from memory: its framing (`entries_with_data`, which also sizes
/// the raw data after entries) and every entry as its message type, as the readers of
/// `ImageDir` do.
pub fn decode_bytes(name: &str, bytes: &[u8]) {
    use pb::*;
    let Some(kind) = image::kind_of(name) else {
        return;
    };
    let Ok(frames) = image::entries_with_data(Path::new(name), kind, bytes) else {
        return;
    };
    macro_rules! each {
        ($t:ty) => {{
            for (_, p, _) in &frames {
                if <$t>::decode(*p).is_err() {
                    return;
                }
            }
        }};
    }
    match kind.name {
        "inventory" => each!(InventoryEntry),
        "pstree" => each!(PstreeEntry),
        "core" => each!(CoreEntry),
        "ids" => each!(TaskKobjIdsEntry),
        "mm" => each!(MmEntry),
        "pagemap" | "pagemap-shmem" => {
            if let Some(((_, h, _), rest)) = frames.split_first() {
                let _ = PagemapHead::decode(*h);
                for (_, p, _) in rest {
                    let _ = PagemapEntry::decode(*p);
                }
            }
        }
        "fdinfo" => each!(FdinfoEntry),
        "files" => each!(FileEntry),
        "fs" => each!(FsEntry),
        "creds" => each!(CredsEntry),
        "pipes-data" | "fifo-data" => each!(PipeDataEntry),
        "sk-queues" => each!(SkPacketEntry),
        "tcp-stream" => each!(TcpStreamEntry),
        "tty-info" => each!(TtyInfoEntry),
        "tty-data" => each!(TtyDataEntry),
        "filelocks" => each!(FileLockEntry),
        "ghost-file" => each!(GhostFileEntry),
        "remap-fpath" => each!(RemapFilePathEntry),
        "memfd" => each!(MemfdInodeEntry),
        "mountpoints" => each!(MntEntry),
        "netdev" => each!(NetDeviceEntry),
        "netns" => each!(NetnsEntry),
        "utsns" => each!(UtsnsEntry),
        "ipcns-var" => each!(IpcVarEntry),
        "ipcns-shm" => each!(IpcShmEntry),
        "ipcns-sem" => each!(IpcSemEntry),
        "ipcns-msg" => {
            for (_, p, d) in &frames {
                if let Ok(e) = IpcMsgEntry::decode(*p) {
                    let _ = image::read_ipc_msgs(Path::new(name), d, e.qnum as usize);
                }
            }
        }
        "ipcns-mq" => each!(CryoMqueueEntry),
        "userns" => each!(UsernsEntry),
        "timens" => each!(TimensEntry),
        "pidns" => each!(PidnsEntry),
        "cgroup" => each!(CgroupEntry),
        "seccomp" => each!(SeccompEntry),
        "apparmor" => each!(ApparmorEntry),
        "cpuinfo" => each!(CpuinfoEntry),
        "binfmt-misc" => each!(BinfmtMiscEntry),
        "stats" => each!(StatsEntry),
        _ => {}
    }
}

/// Decodes image `name` with its real reader and message type, as restore would.
fn decode(dir: &ImageDir, name: &str, bytes: &[u8]) {
    use pb::*;
    let Some(kind) = image::kind_of(name) else {
        return;
    };
    macro_rules! opt {
        ($t:ty) => {{
            let _ = dir.read_opt::<$t>(name, kind);
        }};
    }
    macro_rules! data {
        ($t:ty) => {{
            let _ = dir.read_with_data::<$t>(name, kind);
        }};
    }
    match kind.name {
        "inventory" => opt!(InventoryEntry),
        "pstree" => opt!(PstreeEntry),
        "core" => opt!(CoreEntry),
        "ids" => opt!(TaskKobjIdsEntry),
        "mm" => opt!(MmEntry),
        "pagemap" | "pagemap-shmem" => {
            let _ = dir.read_pagemap(name);
        }
        "fdinfo" => opt!(FdinfoEntry),
        "files" => opt!(FileEntry),
        "fs" => opt!(FsEntry),
        "creds" => opt!(CredsEntry),
        "pipes-data" | "fifo-data" => data!(PipeDataEntry),
        "sk-queues" => data!(SkPacketEntry),
        "tcp-stream" => opt!(TcpStreamEntry),
        "tty-info" => opt!(TtyInfoEntry),
        "tty-data" => opt!(TtyDataEntry),
        "filelocks" => opt!(FileLockEntry),
        "ghost-file" => data!(GhostFileEntry),
        "remap-fpath" => opt!(RemapFilePathEntry),
        "memfd" => opt!(MemfdInodeEntry),
        "mountpoints" => opt!(MntEntry),
        "netdev" => opt!(NetDeviceEntry),
        "netns" => opt!(NetnsEntry),
        "utsns" => opt!(UtsnsEntry),
        "ipcns-var" => opt!(IpcVarEntry),
        "ipcns-shm" => data!(IpcShmEntry),
        "ipcns-sem" => data!(IpcSemEntry),
        "ipcns-msg" => {
            if let Ok(v) = dir.read_with_data::<IpcMsgEntry>(name, kind) {
                for (e, d) in v {
                    let _ = image::read_ipc_msgs(&dir.file(name), &d, e.qnum as usize);
                }
            }
        }
        "ipcns-mq" => opt!(CryoMqueueEntry),
        "userns" => opt!(UsernsEntry),
        "timens" => opt!(TimensEntry),
        "pidns" => opt!(PidnsEntry),
        "cgroup" => opt!(CgroupEntry),
        "seccomp" => opt!(SeccompEntry),
        "apparmor" => opt!(ApparmorEntry),
        "cpuinfo" => opt!(CpuinfoEntry),
        "binfmt-misc" => opt!(BinfmtMiscEntry),
        "stats" => opt!(StatsEntry),
        _ => {}
    }
    // `cryo show`'s generic decoding, on a fraction of the inputs (it is the slowest).
    if hash(bytes).is_multiple_of(4) {
        let _ = cryo::show::show(&dir.file(name));
    }
}

/// Saves an input as a directory (its image files plus `finding.txt`).
pub fn save(input: &Input, dir: &Path, what: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (n, b) in &input.files {
        std::fs::write(dir.join(n), b)?;
    }
    std::fs::write(
        dir.join("finding.txt"),
        format!(
            "{what}\nseed set: {}\nchanged: {:?}\n",
            input.seed, input.changed
        ),
    )
}

/// Loads a saved input (a regression) back.
pub fn load_saved(dir: &Path) -> std::io::Result<Input> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if p.is_file() && name != "finding.txt" {
            files.push((name, std::fs::read(&p)?));
        }
    }
    files.sort();
    Ok(Input {
        seed: dir.display().to_string(),
        whole: files
            .iter()
            .any(|(n, _)| n == "pstree.img" || n == "inventory.img")
            || files.len() > 1,
        files,
        changed: Vec::new(),
    })
}

/// Runs `f`, catching a panic: its message and location.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        let at = LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_default();
        format!("{msg} at {at}")
    })
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A panic hook that records where a panic happened instead of printing it.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        LAST_PANIC.with(|l| *l.borrow_mut() = Some(at));
    }));
}
