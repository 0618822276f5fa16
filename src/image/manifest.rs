//! `cryo-manifest.json`: size and xxh3-128 digests of every image cryo wrote.
//!
//! CRIU's format has no checksums. The manifest lets restore reject a truncated or modified
//! image before it creates anything. Large files (pages) are digested per 4 MiB block so dump
//! can hash in parallel while writing, and restore can verify in parallel.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::ImageError;

/// File name of the manifest inside an images directory.
pub const NAME: &str = "cryo-manifest.json";
/// Digest block size.
pub const BLOCK: usize = 4 << 20;

/// Size and per-block digests of one file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    /// xxh3-128 of each `BLOCK`-sized block, hex.
    pub blocks: Vec<String>,
}

impl FileDigest {
    /// Digest of an in-memory file.
    pub fn of(bytes: &[u8]) -> FileDigest {
        FileDigest {
            size: bytes.len() as u64,
            blocks: bytes.chunks(BLOCK).map(block_digest).collect(),
        }
    }
}

/// Digest of one block.
pub fn block_digest(b: &[u8]) -> String {
    format!("{:032x}", xxh3_128(b))
}

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub digest: String,
    pub block_size: usize,
    pub files: BTreeMap<String, FileDigest>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: 1,
            digest: "xxh3-128".into(),
            block_size: BLOCK,
            files: BTreeMap::new(),
        }
    }
}

impl Manifest {
    /// Loads the manifest of `dir`; `Ok(None)` when there is none (e.g. images written by CRIU).
    pub fn load(dir: &Path) -> Result<Option<Manifest>, ImageError> {
        let path = dir.join(NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ImageError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
            path: path.clone(),
            what: format!("not a valid manifest: {e}"),
        })?;
        if m.format != 1 || m.digest != "xxh3-128" || m.block_size != BLOCK {
            return Err(ImageError::Invalid {
                path,
                what: format!(
                    "unsupported manifest (format {}, digest {}, block {})",
                    m.format, m.digest, m.block_size
                ),
            });
        }
        Ok(Some(m))
    }

    /// Verifies every listed file (size, then each block), spreading the work over `threads`.
    pub fn verify(&self, dir: &Path, threads: usize) -> Result<(), ImageError> {
        let files: Vec<(&String, &FileDigest)> = self.files.iter().collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_err = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((name, want)) = files.get(i) else {
                        break;
                    };
                    if let Err(e) = verify_file(&dir.join(name), want) {
                        first_err.lock().expect("lock").get_or_insert(e);
                        break;
                    }
                });
            }
        });
        match first_err.into_inner().expect("lock") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn verify_file(path: &Path, want: &FileDigest) -> Result<(), ImageError> {
    let digest_err = |what: String| ImageError::Digest {
        path: path.to_path_buf(),
        what,
    };
    let mut f = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::Io {
                path: path.to_path_buf(),
                op: "open",
                source,
            }
        }
    })?;
    let size = f
        .metadata()
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "stat",
            source,
        })?
        .len();
    if size != want.size {
        return Err(digest_err(format!(
            "size is {size} bytes, manifest says {}",
            want.size
        )));
    }
    if want.blocks.len() as u64 != size.div_ceil(BLOCK as u64) {
        return Err(digest_err("block list does not match the size".into()));
    }
    let mut buf = vec![0u8; BLOCK.min(size as usize).max(1)];
    for (i, d) in want.blocks.iter().enumerate() {
        let len = BLOCK.min((size - (i * BLOCK) as u64) as usize);
        f.read_exact(&mut buf[..len])
            .map_err(|source| ImageError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            })?;
        if block_digest(&buf[..len]) != *d {
            return Err(digest_err(format!(
                "bytes {}..{} changed",
                i * BLOCK,
                i * BLOCK + len
            )));
        }
    }
    Ok(())
}
