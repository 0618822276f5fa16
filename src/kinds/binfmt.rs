//! binfmt_misc registrations of a binfmt_misc mount of the tree (binfmt-misc.img, CRIU's
//! layout). A binfmt_misc file system keeps its registrations only while it is mounted
//! somewhere (since Linux 6.7 one instance per user namespace): once the dumped tree's
//! mount namespace is gone, so are they, unless another mount (systemd's
//! /proc/sys/fs/binfmt_misc on most hosts) holds the instance. Dump reads each registration's file (enabled or
//! disabled, interpreter, flags, and either its magic, mask and offset or its extension);
//! restore, once the file system is mounted again and the tree's root is in place (an
//! interpreter with the F flag is opened at registration, from the registering thread's
//! root), registers those it does not show (a registration the instance kept is left as it
//! is) and disables those that were disabled. The instance may be the host's (a tree without
//! a user namespace of its own shares it): what a failed restore registered is removed
//! again ([`Made`]).

use super::error::{task_error_from, TaskError, Unsupported};
use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::image::{self, pb, ImageDir};

/// The image the registrations go to (one for the whole dump, as CRIU's).
pub const IMAGE: &str = "binfmt-misc.img";

/// Why binfmt_misc registrations could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("binfmt_misc mount {mountpoint}: {what}")]
    Io {
        mountpoint: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}
task_error_from!(BinfmtError);

/// A registration's file, as the kernel shows it, in CRIU's fields (`name` set by the caller).
/// Lines are split at newlines only: the name, interpreter and extension are the kernel's
/// bytes (an extension may hold any byte but NUL, ':', '/' and newline, '\r' too).
fn parse(name: &[u8], text: &[u8]) -> Result<pb::BinfmtMiscEntry, String> {
    let mut e = pb::BinfmtMiscEntry {
        name: name.to_vec(),
        ..Default::default()
    };
    let ascii = |v: &[u8], what: &str| {
        std::str::from_utf8(v)
            .map(str::to_string)
            .map_err(|_| format!("its {what} is not text: {}", v.escape_ascii()))
    };
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    for line in text.split(|&b| b == b'\n') {
        if line == b"enabled" {
            e.enabled = true;
        } else if line == b"disabled" {
            e.enabled = false;
        } else if let Some(v) = line.strip_prefix(b"interpreter ") {
            e.interpreter = v.to_vec();
        } else if let Some(v) = line.strip_prefix(b"flags: ") {
            e.flags = Some(ascii(v, "flags")?);
        } else if let Some(v) = line.strip_prefix(b"offset ") {
            let v = ascii(v, "offset")?;
            e.offset = Some(v.trim().parse().map_err(|_| format!("offset {v:?}"))?);
        } else if let Some(v) = line.strip_prefix(b"magic ") {
            e.magic = Some(ascii(v, "magic")?);
        } else if let Some(v) = line.strip_prefix(b"mask ") {
            e.mask = Some(ascii(v, "mask")?);
        } else if let Some(v) = line.strip_prefix(b"extension .") {
            e.extension = Some(v.to_vec());
        } else {
            return Err(format!(
                "a line cryo does not know: \"{}\"",
                line.escape_ascii()
            ));
        }
    }
    if e.interpreter.is_empty() || (e.magic.is_none() == e.extension.is_none()) {
        return Err("neither a magic nor an extension handler with an interpreter".into());
    }
    Ok(e)
}

/// The string that registers `e` again (`:name:type:offset:magic:mask:interpreter:flags`):
/// the kernel shows magic and mask as hex digits and takes them back as `\xHH` escapes; the
/// name, extension and interpreter go back as the bytes they are.
fn register_line(e: &pb::BinfmtMiscEntry) -> Result<Vec<u8>, String> {
    let escaped = |hex: &str| -> Result<String, String> {
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("magic or mask {hex:?} is not hex digits"));
        }
        Ok(hex
            .as_bytes()
            .chunks(2)
            .map(|p| format!("\\x{}{}", p[0] as char, p[1] as char))
            .collect())
    };
    let bad = |s: &[u8]| s.iter().any(|b| matches!(b, b':' | b'\n' | b'\0'));
    let flags = e.flags.as_deref().unwrap_or("");
    if e.name.is_empty()
        || bad(&e.name)
        || e.name.contains(&b'/')
        || bad(&e.interpreter)
        || bad(flags.as_bytes())
    {
        return Err("a field is empty or holds ':', a newline or a NUL".into());
    }
    let mut line = vec![b':'];
    line.extend_from_slice(&e.name);
    match (&e.magic, &e.extension) {
        (Some(magic), _) => line.extend_from_slice(
            format!(
                ":M:{}:{}:{}:",
                e.offset.unwrap_or(0),
                escaped(magic)?,
                escaped(e.mask.as_deref().unwrap_or(""))?
            )
            .as_bytes(),
        ),
        (None, Some(ext)) if !ext.is_empty() && !bad(ext) && !ext.contains(&b'/') => {
            line.extend_from_slice(b":E::");
            line.extend_from_slice(ext);
            line.extend_from_slice(b"::");
        }
        _ => return Err("neither a magic nor a plain extension".into()),
    }
    line.extend_from_slice(&e.interpreter);
    line.push(b':');
    line.extend_from_slice(flags.as_bytes());
    Ok(line)
}

/// Saves the registrations the binfmt_misc mount whose root `at` holds shows (the tree's
/// mount at `mountpoint`, in the namespace of process `pid`), once per dump: a second
/// binfmt_misc mount of the tree shows the same instance (the tree's user namespace's) and is
/// not saved again. An image an earlier dump left in the directory is replaced or removed.
pub fn dump(pid: i32, at: &OwnedFd, mountpoint: &str, dir: &ImageDir) -> Result<(), BinfmtError> {
    if dir.written_now(IMAGE) {
        return Ok(());
    }
    let err = |what: String| {
        let mountpoint = mountpoint.to_string();
        move |source| BinfmtError::Io {
            mountpoint,
            what,
            source,
        }
    };
    let base = format!("/proc/self/fd/{}", at.as_raw_fd());
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&base)
        .map_err(err("list its registrations".into()))?
        .map(|d| d.map(|d| d.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err("list its registrations".into()))?;
    names.retain(|n| n != "register" && n != "status");
    names.sort();
    let mut entries = Vec::new();
    for n in names {
        let shown = n.as_bytes().escape_ascii().to_string();
        let raw = std::fs::read(Path::new(&base).join(&n))
            .map_err(err(format!("read registration {shown}")))?;
        let refuse = |why: String| {
            Unsupported::of(
                pid,
                format!("binfmt_misc registration {shown} (mount {mountpoint})"),
                why,
                "remove the registration before the dump",
            )
        };
        let e = parse(n.as_bytes(), &raw).map_err(refuse)?;
        register_line(&e).map_err(refuse)?;
        entries.push(e);
    }
    if entries.is_empty() {
        // None now: what an earlier dump into this directory saved must not come back.
        match std::fs::remove_file(dir.file(IMAGE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err("remove the earlier dump's image".into())(e))
            }
            _ => {}
        }
    } else {
        dir.write(IMAGE, image::BINFMT_MISC, &entries)?;
    }
    Ok(())
}

/// The registrations a restore made in one binfmt_misc mount: removed again when dropped
/// (a failed restore), unless [`Made::keep`] was called (the tree runs).
#[derive(Debug)]
pub struct Made {
    at: OwnedFd,
    mountpoint: String,
    names: Vec<Vec<u8>>,
}

impl Made {
    /// The tree runs with them: they stay.
    pub fn keep(mut self) {
        self.names.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            let gone = openat(
                &self.at,
                std::ffi::OsStr::from_bytes(&n),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|f| std::fs::File::from(f).write_all(b"-1"));
            match gone {
                Ok(()) => {
                    tracing::info!(mount = %self.mountpoint, "binfmt_misc registration {} removed again (restore failed)", n.escape_ascii())
                }
                Err(e) => {
                    tracing::error!(mount = %self.mountpoint, "binfmt_misc registration {0} made by the failed restore could not be removed: {e}; remove it with `echo -1 > .../binfmt_misc/{0}`", n.escape_ascii())
                }
            }
        }
    }
}

/// What `images` saved (nothing when the dump saw no registration).
pub fn load(images: &Path) -> Result<Vec<pb::BinfmtMiscEntry>, BinfmtError> {
    let dir = ImageDir::open(images)?;
    Ok(dir
        .read_opt::<pb::BinfmtMiscEntry>(IMAGE, image::BINFMT_MISC)?
        .unwrap_or_default())
}

/// Registers again, in the binfmt_misc mount whose root `at` holds (mounted again at
/// `mountpoint`), the saved `entries` ([`load`]) the instance does not show, and disables
/// what was disabled. Runs with the tree's root as the caller's root (the F flag opens the
/// interpreter now). On an error, what it registered is removed again.
pub fn restore(
    entries: &[pb::BinfmtMiscEntry],
    at: BorrowedFd<'_>,
    mountpoint: &str,
) -> Result<Made, BinfmtError> {
    let mut made = Made {
        at: at.try_clone_to_owned().map_err(|source| BinfmtError::Io {
            mountpoint: mountpoint.to_string(),
            what: "hold its root".into(),
            source,
        })?,
        mountpoint: mountpoint.to_string(),
        names: Vec::new(),
    };
    let err = |what: String| {
        let mountpoint = mountpoint.to_string();
        move |source| BinfmtError::Io {
            mountpoint,
            what,
            source,
        }
    };
    for e in entries {
        let shown = e.name.escape_ascii().to_string();
        let line = register_line(e).map_err(|why| {
            TaskError::BadImage(format!("{IMAGE}: registration \"{shown}\": {why}"))
        })?;
        let name = std::ffi::OsStr::from_bytes(&e.name);
        if statat(&made.at, name, AtFlags::empty()).is_ok() {
            continue;
        }
        let write = |name: &std::ffi::OsStr, data: &[u8]| {
            openat(
                &made.at,
                name,
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|f| std::fs::File::from(f).write_all(data))
        };
        write("register".as_ref(), &line).map_err(err(format!("register {shown}")))?;
        made.names.push(e.name.clone());
        if !e.enabled {
            write(name, b"0").map_err(err(format!("disable {shown}")))?;
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_read_back_as_they_were_made() {
        let m = parse(
            b"m",
            b"disabled\ninterpreter /bin/i\nflags: OCP\noffset 3\nmagic 7f454c\nmask ff00ff\n",
        )
        .unwrap();
        assert!(!m.enabled);
        assert_eq!(
            register_line(&m).unwrap(),
            b":m:M:3:\\x7f\\x45\\x4c:\\xff\\x00\\xff:/bin/i:OCP"
        );
        let e = parse(
            b"e",
            b"enabled\ninterpreter /bin/sh\nflags: \nextension .x-y\n",
        )
        .unwrap();
        assert!(e.enabled);
        assert_eq!(register_line(&e).unwrap(), b":e:E::x-y::/bin/sh:");
        // Any bytes the kernel takes in an extension (not UTF-8, a trailing CR) come back.
        let raw = parse(
            b"r\xff",
            b"enabled\ninterpreter /bin/sh\nflags: \nextension .\xe3\x28\r\n",
        )
        .unwrap();
        assert_eq!(raw.extension.as_deref(), Some(&b"\xe3\x28\r"[..]));
        assert_eq!(
            register_line(&raw).unwrap(),
            b":r\xff:E::\xe3\x28\r::/bin/sh:"
        );
        assert!(parse(b"z", b"enabled\nsomething new\n").is_err());
        let mut bad = e.clone();
        bad.interpreter = b"/a:b".to_vec();
        assert!(register_line(&bad).is_err());
    }
}
