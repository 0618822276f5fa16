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
fn parse(name: &str, text: &str) -> Result<pb::BinfmtMiscEntry, String> {
    let mut e = pb::BinfmtMiscEntry {
        name: name.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        if line == "enabled" {
            e.enabled = true;
        } else if line == "disabled" {
            e.enabled = false;
        } else if let Some(v) = line.strip_prefix("interpreter ") {
            e.interpreter = v.to_string();
        } else if let Some(v) = line.strip_prefix("flags: ") {
            e.flags = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("offset ") {
            e.offset = Some(v.trim().parse().map_err(|_| format!("offset {v:?}"))?);
        } else if let Some(v) = line.strip_prefix("magic ") {
            e.magic = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("mask ") {
            e.mask = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("extension .") {
            e.extension = Some(v.to_string());
        } else {
            return Err(format!("a line cryo does not know: {line:?}"));
        }
    }
    if e.interpreter.is_empty() || (e.magic.is_none() == e.extension.is_none()) {
        return Err("neither a magic nor an extension handler with an interpreter".into());
    }
    Ok(e)
}

/// The string that registers `e` again (`:name:type:offset:magic:mask:interpreter:flags`):
/// the kernel shows magic and mask as hex digits and takes them back as `\xHH` escapes.
fn register_line(e: &pb::BinfmtMiscEntry) -> Result<String, String> {
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
    let bad = |s: &str| s.contains([':', '\n', '\0']);
    let flags = e.flags.as_deref().unwrap_or("");
    if bad(&e.name) || e.name.contains('/') || bad(&e.interpreter) || bad(flags) {
        return Err("a field holds ':', a newline or a NUL".into());
    }
    match (&e.magic, &e.extension) {
        (Some(magic), _) => Ok(format!(
            ":{}:M:{}:{}:{}:{}:{}",
            e.name,
            e.offset.unwrap_or(0),
            escaped(magic)?,
            escaped(e.mask.as_deref().unwrap_or(""))?,
            e.interpreter,
            flags
        )),
        (None, Some(ext)) if !bad(ext) && !ext.contains('/') => Ok(format!(
            ":{}:E::{}::{}:{}",
            e.name, ext, e.interpreter, flags
        )),
        _ => Err("neither a magic nor a plain extension".into()),
    }
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
    let mut names: Vec<String> = std::fs::read_dir(&base)
        .map_err(err("list its registrations".into()))?
        .filter_map(|d| d.ok()?.file_name().into_string().ok())
        .filter(|n| n != "register" && n != "status")
        .collect();
    names.sort();
    let mut entries = Vec::new();
    for n in names {
        let raw = std::fs::read(Path::new(&base).join(&n))
            .map_err(err(format!("read registration {n}")))?;
        // An extension of any bytes the kernel takes: cryo's image holds text only.
        let text = String::from_utf8(raw).map_err(|_| {
            Unsupported::of(
                pid,
                format!("binfmt_misc registration {n} (mount {mountpoint})"),
                "its extension or interpreter is not UTF-8 text, which binfmt-misc.img cannot hold",
                "remove the registration before the dump",
            )
        })?;
        let e = parse(&n, &text).map_err(|why| {
            Unsupported::of(
                pid,
                format!("binfmt_misc registration {n} (mount {mountpoint})"),
                why,
                "remove the registration before the dump",
            )
        })?;
        register_line(&e).map_err(|why| {
            Unsupported::of(
                pid,
                format!("binfmt_misc registration {n} (mount {mountpoint})"),
                why,
                "remove the registration before the dump",
            )
        })?;
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
    names: Vec<String>,
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
                n.as_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|f| std::fs::File::from(f).write_all(b"-1"));
            match gone {
                Ok(()) => {
                    tracing::info!(mount = %self.mountpoint, "binfmt_misc registration {n} removed again (restore failed)")
                }
                Err(e) => {
                    tracing::error!(mount = %self.mountpoint, "binfmt_misc registration {n} made by the failed restore could not be removed: {e}; remove it with `echo -1 > .../binfmt_misc/{n}`")
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
        let line = register_line(e).map_err(|why| {
            TaskError::BadImage(format!("{IMAGE}: registration {:?}: {why}", e.name))
        })?;
        if statat(&made.at, e.name.as_str(), AtFlags::empty()).is_ok() {
            continue;
        }
        let write = |name: &str, data: &[u8]| {
            openat(
                &made.at,
                name,
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
            .and_then(|f| std::fs::File::from(f).write_all(data))
        };
        write("register", line.as_bytes()).map_err(err(format!("register {}", e.name)))?;
        made.names.push(e.name.clone());
        if !e.enabled {
            write(&e.name, b"0").map_err(err(format!("disable {}", e.name)))?;
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
            "m",
            "disabled\ninterpreter /bin/i\nflags: OCP\noffset 3\nmagic 7f454c\nmask ff00ff\n",
        )
        .unwrap();
        assert!(!m.enabled);
        assert_eq!(
            register_line(&m).unwrap(),
            ":m:M:3:\\x7f\\x45\\x4c:\\xff\\x00\\xff:/bin/i:OCP"
        );
        let e = parse(
            "e",
            "enabled\ninterpreter /bin/sh\nflags: \nextension .x-y\n",
        )
        .unwrap();
        assert!(e.enabled);
        assert_eq!(register_line(&e).unwrap(), ":e:E::x-y::/bin/sh:");
        assert!(parse("z", "enabled\nsomething new\n").is_err());
        let mut bad = e.clone();
        bad.interpreter = "/a:b".into();
        assert!(register_line(&bad).is_err());
    }
}
