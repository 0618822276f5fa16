//! binfmt_misc registrations of a binfmt_misc mount of the tree (binfmt-misc.img, CRIU's
//! layout). A binfmt_misc file system keeps its registrations only while it is mounted
//! somewhere (and, since Linux 6.7, one instance per user namespace): once the dumped tree's
//! mount namespace is gone, so may they be. Dump reads each registration's file (enabled or
//! disabled, interpreter, flags, and either its magic, mask and offset or its extension);
//! restore, once the file system is mounted again, registers those it does not show (a
//! registration the instance kept is left as it is) and disables those that were disabled.

use super::error::{task_error_from, TaskError, Unsupported};
use std::os::fd::{AsRawFd, OwnedFd};
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
/// mount at `mountpoint`, in the namespace of process `pid`), once per dump: a second binfmt_misc mount of the tree shows the
/// same instance (the tree's user namespace's) and is not saved again.
pub fn dump(pid: i32, at: &OwnedFd, mountpoint: &str, dir: &ImageDir) -> Result<(), BinfmtError> {
    if dir.file(IMAGE).exists() {
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
    if !entries.is_empty() {
        dir.write(IMAGE, image::BINFMT_MISC, &entries)?;
    }
    Ok(())
}

/// Registers again, in the binfmt_misc mount at `root` (its path, just mounted), what
/// `images` saved and the instance does not show, and disables what was disabled.
pub fn restore(images: &Path, root: &Path, mountpoint: &str) -> Result<(), BinfmtError> {
    let dir = ImageDir::open(images)?;
    let Some(entries) = dir.read_opt::<pb::BinfmtMiscEntry>(IMAGE, image::BINFMT_MISC)? else {
        return Ok(());
    };
    let err = |what: String| {
        let mountpoint = mountpoint.to_string();
        move |source| BinfmtError::Io {
            mountpoint,
            what,
            source,
        }
    };
    for e in &entries {
        let line = register_line(e).map_err(|why| {
            TaskError::BadImage(format!("{IMAGE}: registration {:?}: {why}", e.name))
        })?;
        let file = root.join(&e.name);
        if file.exists() {
            continue;
        }
        std::fs::write(root.join("register"), line.as_bytes())
            .map_err(err(format!("register {}", e.name)))?;
        if !e.enabled {
            std::fs::write(&file, b"0").map_err(err(format!("disable {}", e.name)))?;
        }
    }
    Ok(())
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
