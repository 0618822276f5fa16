//! Parsers for /proc/PID files. Pure functions over text (unit-tested on fixtures), plus thin
//! readers that name the file in every error.

use std::collections::HashMap;
use std::path::PathBuf;

/// Error reading or parsing a /proc file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

/// Reads /proc/`pid`/`name` as text.
pub fn read(pid: i32, name: &str) -> Result<String, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{name}"));
    read_text(&path).map_err(|source| ProcError::Read { path, source })
}

/// Reads a /proc (or other pseudo-file system) file as text in few `read`s. std's
/// `read_to_string` asks for the size first (an `fstat`; a /proc file says 0) and then reads
/// 32, 32, 64, 128... bytes: a 1.5 KiB `status` took 8 system calls besides open and close,
/// this takes 2, which a dump of 100 processes or 10 000 threads does thousands of times.
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(2 * len, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads the sysctl `/proc/sys/NAME` (of the calling thread's namespaces) as text, in one
/// `read`: the kernel formats a sysctl anew at every read and answers a read at a non-zero
/// offset with end of file, so a value longer than the first read's buffer (std's
/// `read_to_string` starts with 32 bytes; `kernel.sem` is up to 43) came back cut.
pub fn sysctl(name: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/sys/{name}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The resource limits of `pid` from `/proc/PID/limits`, as (soft, hard) in RLIMIT_* order
/// (`unlimited` is `u64::MAX`). Unlike `prlimit64`, reading them needs no CAP_SYS_RESOURCE
/// for a process of another user.
pub fn limits(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    let text = read(pid, "limits")?;
    parse_limits(&text).ok_or_else(|| ProcError::Parse {
        path: format!("/proc/{pid}/limits").into(),
        what: "unexpected format".into(),
    })
}

/// Parses `/proc/PID/limits`: a header, then one line per limit, printed by the kernel in
/// fixed columns (name 25, soft 20, hard 20, units).
pub fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let value = |s: &str| match s.trim() {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    };
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let soft = value(l.get(26..47)?)?;
            let hard = value(l.get(47..68).or_else(|| l.get(47..))?)?;
            Some((soft, hard))
        })
        .collect()
}

/// Reads a /proc symlink (exe, cwd, root, fd/N).
pub fn link(pid: i32, name: &str) -> Result<String, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{name}"));
    std::fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| ProcError::Read { path, source })
}

fn bad(pid: i32, name: &str, what: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: PathBuf::from(format!("/proc/{pid}/{name}")),
        what: what.into(),
    }
}

/// The fields of /proc/PID/stat that cryo uses.
#[derive(Debug, Clone, Default)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// The controlling terminal (device number, as st_rdev encodes it; 0: none).
    pub tty_nr: u32,
    /// The foreground process group of that terminal (-1: none).
    pub tpgid: i32,
    pub flags: u32,
    pub num_threads: i64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

/// Parses /proc/PID/stat text.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Field 3 is the first after ")"; f[i] is field i+3.
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let n = |i: usize| -> Option<u64> { f.get(i - 3)?.parse::<u64>().ok() };
    let s = |i: usize| -> Option<i64> { f.get(i - 3)?.parse::<i64>().ok() };
    // Fields the kernel prints from an int (%d) or an unsigned int (%u).
    let int = |i: usize| -> Option<i32> { f.get(i - 3)?.parse::<i32>().ok() };
    let uint = |i: usize| -> Option<u32> { f.get(i - 3)?.parse::<u32>().ok() };
    Some(Stat {
        comm,
        state: f.first()?.chars().next()?,
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        tty_nr: uint(7)?,
        tpgid: int(8)?,
        flags: uint(9)?,
        num_threads: s(20)?,
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
        exit_code: int(52)?,
    })
}

/// Reads and parses /proc/PID/stat.
pub fn stat(pid: i32) -> Result<Stat, ProcError> {
    parse_stat(&read(pid, "stat")?).ok_or_else(|| bad(pid, "stat", "unexpected format"))
}

/// /proc/PID/status as key → value (trimmed).
pub fn parse_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The fields of /proc/PID/status that cryo uses.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    pub umask: u32,
    pub threads: u32,
    pub shd_pnd: u64,
    pub sig_pnd: u64,
    /// Signals with a handler / ignored (SigCgt, SigIgn).
    pub sig_cgt: u64,
    pub sig_ign: u64,
    /// The task's name (comm), from the `Name:` line when the kernel did not escape it there
    /// (it escapes a backslash and control characters with a backslash; `comm` has it raw).
    pub name: Option<String>,
}

/// Reads and parses /proc/PID/status.
pub fn status(pid: i32) -> Result<Status, ProcError> {
    let text = read(pid, "status")?;
    let m = parse_status(&text);
    let get = |k: &str| {
        m.get(k)
            .ok_or_else(|| bad(pid, "status", format!("no {k} line")))
    };
    let ids = |k: &str| -> Result<[u32; 4], ProcError> {
        let v: Vec<u32> = get(k)?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.try_into()
            .map_err(|_| bad(pid, "status", format!("bad {k} line")))
    };
    let hex = |k: &str| -> Result<u64, ProcError> {
        u64::from_str_radix(get(k)?, 16).map_err(|_| bad(pid, "status", format!("bad {k} line")))
    };
    Ok(Status {
        uids: ids("Uid")?,
        gids: ids("Gid")?,
        groups: get("Groups")?
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect(),
        cap_inh: hex("CapInh")?,
        cap_prm: hex("CapPrm")?,
        cap_eff: hex("CapEff")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb").unwrap_or(0),
        no_new_privs: m.get("NoNewPrivs").is_some_and(|v| v == "1"),
        seccomp: m.get("Seccomp").and_then(|v| v.parse().ok()).unwrap_or(0),
        umask: u32::from_str_radix(get("Umask")?, 8)
            .map_err(|_| bad(pid, "status", "bad Umask line"))?,
        threads: get("Threads")?.parse().unwrap_or(1),
        shd_pnd: hex("ShdPnd")?,
        sig_pnd: hex("SigPnd")?,
        sig_cgt: hex("SigCgt").unwrap_or(u64::MAX),
        sig_ign: hex("SigIgn").unwrap_or(u64::MAX),
        name: status_name(&text),
    })
}

/// The raw value of status's `Name:` line (after its tab, untrimmed: a name may end in a
/// space), None when it holds a backslash: the kernel escaped something there.
fn status_name(text: &str) -> Option<String> {
    let line = text.lines().next()?.strip_prefix("Name:\t")?;
    (!line.contains('\\')).then(|| line.to_string())
}

/// One line of /proc/PID/maps plus the VmFlags of smaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub pgoff: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, ...); empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags (`rd wr mr mw me ac sd ...`).
    pub vmflags: Vec<String>,
    /// smaps `KernelPageSize` in bytes (huge for hugetlb mappings; 0 from plain maps).
    pub page_size: u64,
}

impl Vma {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vmflags.iter().any(|x| x == f)
    }
    /// A file-backed mapping (not a pseudo-name, not anonymous).
    pub fn is_file(&self) -> bool {
        self.inode != 0
    }
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

fn parse_maps_line(line: &str) -> Option<Vma> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let off = it.next()?;
    let dev = it.next()?;
    let rest = it.next()?;
    // `rest` is "inode" and maybe more; name follows after spaces.
    let (inode, name) = match it.next() {
        Some(n) => (rest, n.trim_start().to_string()),
        None => (rest.trim(), String::new()),
    };
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    Some(Vma {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms.first() == Some(&b'r'),
        write: perms.get(1) == Some(&b'w'),
        exec: perms.get(2) == Some(&b'x'),
        shared: perms.get(3) == Some(&b's'),
        pgoff: u64::from_str_radix(off, 16).ok()?,
        dev: (
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        name,
        vmflags: Vec::new(),
        page_size: 0,
    })
}

/// Parses /proc/PID/smaps (or maps, then without VmFlags).
pub fn parse_smaps(text: &str) -> Option<Vec<Vma>> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            out.last_mut()?.vmflags = flags.split_whitespace().map(str::to_string).collect();
            continue;
        }
        if let Some(kb) = line
            .strip_prefix("KernelPageSize:")
            .and_then(|v| v.trim().strip_suffix("kB"))
        {
            out.last_mut()?.page_size = kb.trim().parse::<u64>().ok()? * 1024;
            continue;
        }
        // Header lines start with a hex range "xxx-yyy "; field lines start with "Name:".
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            out.push(parse_maps_line(line)?);
        }
    }
    Some(out)
}

/// Reads and parses /proc/PID/smaps.
pub fn smaps(pid: i32) -> Result<Vec<Vma>, ProcError> {
    parse_smaps(&read(pid, "smaps")?).ok_or_else(|| bad(pid, "smaps", "unexpected format"))
}

/// The fields of /proc/PID/fdinfo/N that cryo uses.
#[derive(Debug, Clone, Default)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: i32,
    pub ino: u64,
}

/// Parses fdinfo text (`flags` is octal).
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let m = parse_status(text);
    Some(FdInfo {
        pos: m.get("pos")?.parse().ok()?,
        flags: u32::from_str_radix(m.get("flags")?, 8).ok()?,
        mnt_id: m.get("mnt_id").and_then(|v| v.parse().ok()).unwrap_or(-1),
        ino: m.get("ino").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// Reads /proc/PID/fdinfo/FD.
pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let name = format!("fdinfo/{fd}");
    parse_fdinfo(&read(pid, &name)?).ok_or_else(|| bad(pid, &name, "unexpected format"))
}

/// Open fd numbers of a task, ascending.
pub fn fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/fd"));
    let rd = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Thread ids of a process, ascending (leader first).
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/task"));
    let rd = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable_by_key(|&t| (t != pid, t));
    Ok(v)
}

/// /proc/PID/auxv as native-endian u64 words (pairs of key, value; ends with AT_NULL).
pub fn auxv(pid: i32) -> Result<Vec<u64>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/auxv"));
    let b = std::fs::read(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// The ids of a `NSpid:`-style line of `pid`'s status (`NSpid:`, `NSpgid:`, `NSsid:`): one
/// per PID namespace from the one of cryo's /proc down to the task's own.
pub fn ns_ids(pid: i32, line: &str) -> Option<Vec<i32>> {
    let text = read(pid, "status").ok()?;
    text.lines().find_map(|l| l.strip_prefix(line)).map(|l| {
        l.split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    })
}

/// `pid`'s id in the PID namespace of process `root` (cryo's PIDs), the tree's: the one the
/// images hold. None when it is not in that namespace or one below it.
pub fn tree_pid(root: i32, pid: i32) -> Option<i32> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let level = ns_ids(root, "NSpid:")?.len().checked_sub(1)?;
    let ids = ns_ids(pid, "NSpid:")?;
    let id = ids.get(level).copied().filter(|&v| v > 0)?;
    // At the same depth is not enough: `pid`'s namespace, `ids.len() - 1 - level` levels
    // up, must be the root's (not a sibling's of the same depth).
    let ns = |p: i32| std::fs::File::open(format!("/proc/{p}/ns/pid")).ok();
    let same = |a: &std::fs::File, b: &std::fs::File| {
        let (a, b) = (a.metadata().ok()?, b.metadata().ok()?);
        Some(a.dev() == b.dev() && a.ino() == b.ino())
    };
    let want = ns(root)?;
    let mut at = std::os::fd::OwnedFd::from(ns(pid)?);
    for _ in 0..ids.len() - 1 - level {
        at = crate::sys::ns::parent(at.as_fd()).ok()?;
    }
    same(&std::fs::File::from(at), &want)?.then_some(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_text_reads_past_its_first_buffer_and_refuses_non_utf8() {
        let dir = std::env::temp_dir().join(format!("cryo-read-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big: String = (0..3000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.join("big"), &big).unwrap();
        assert_eq!(super::read_text(&dir.join("big")).unwrap(), big);
        std::fs::write(dir.join("bad"), [0x66, 0xff, 0x0a]).unwrap();
        let e = super::read_text(&dir.join("bad")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        std::fs::remove_dir_all(&dir).unwrap();
        // A /proc file (size 0 in its stat) comes whole.
        let status = super::read_text(std::path::Path::new("/proc/self/status")).unwrap();
        assert!(status.starts_with("Name:"), "{status}");
        assert!(status.contains("\nnonvoluntary_ctxt_switches:"), "{status}");
    }

    #[test]
    fn a_status_name_is_taken_raw_unless_escaped() {
        let name = |t: &str| super::status_name(t);
        assert_eq!(
            name("Name:\tworker 1 \nUmask:\t0022\n").as_deref(),
            Some("worker 1 ")
        );
        assert_eq!(name("Name:\ta\\nb\nUmask:\t0022\n"), None);
        assert_eq!(name("Name:\ta\\\\b\n"), None);
        assert_eq!(name("Umask:\t0022\n"), None);
    }

    #[test]
    fn parses_proc_limits() {
        let text =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max stack size            8388608              unlimited            bytes     \n\
Max nice priority         0                    0                    \n";
        assert_eq!(
            super::parse_limits(text),
            Some(vec![(u64::MAX, u64::MAX), (8388608, u64::MAX), (0, 0)])
        );
        let own = super::limits(crate::sys::proc::own_pid()).unwrap();
        assert_eq!(own.len(), 16);
        let me = crate::sys::proc::own_pid();
        let nofile = crate::sys::proc::get_rlimit(me, libc::RLIMIT_NOFILE).unwrap();
        assert_eq!(own[libc::RLIMIT_NOFILE as usize], nofile);
    }

    use super::*;

    #[test]
    fn stat_with_spaces_in_comm() {
        let t = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123 1000 10 18446744073709551615 4194304 4198400 140737488346112 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 6295552 6296000 6299648 140737488350000 140737488350010 140737488350010 140737488351000 0\n";
        let s = parse_stat(t).unwrap();
        assert_eq!(s.comm, "a b) c");
        assert_eq!(s.state, 'S');
        assert_eq!(s.session, 42);
        assert_eq!(s.start_code, 4194304);
        assert_eq!(s.start_brk, 6299648);
        assert_eq!(s.env_end, 140737488351000);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn smaps_names_and_flags() {
        let t = "55d0c0000000-55d0c0001000 r-xp 00001000 fe:00 1234   /usr/bin/my prog\nSize: 4 kB\nVmFlags: rd ex mr mw me\n7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\nVmFlags: rd wr mr mw me gd ac\n7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n";
        let v = parse_smaps(t).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "/usr/bin/my prog");
        assert!(v[0].exec && !v[0].write && v[0].pgoff == 0x1000);
        assert_eq!(v[0].dev, (0xfe, 0));
        assert_eq!(v[1].name, "[stack]");
        assert!(v[1].has_flag("gd"));
        assert!(v[2].shared);
        assert_eq!(v[2].name, "/dev/zero (deleted)");
    }

    #[test]
    fn fdinfo_octal_flags() {
        let f = parse_fdinfo("pos:\t12\nflags:\t02102001\nmnt_id:\t27\nino:\t555\n").unwrap();
        assert_eq!(f.pos, 12);
        assert_eq!(f.flags, 0o2102001);
        assert_eq!(f.mnt_id, 27);
    }
}
