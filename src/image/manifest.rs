//! `cryo-manifest.json`: size and xxh3-128 digests of every image cryo wrote.
//!
//! CRIU's format has no checksums. The manifest lets restore reject a truncated or modified
//! image before it creates anything. Large files (pages) are digested per 4 MiB block so dump
//! can hash in parallel while writing, and restore can verify in parallel.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_128;

use super::ImageError;
use crate::sys::mem::Mapping;

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

    /// Digest of a file made of `parts` one after the other (the same as [`FileDigest::of`]
    /// their concatenation), without joining them.
    pub fn of_parts(parts: &[&[u8]]) -> FileDigest {
        let mut d = Digester::default();
        parts.iter().for_each(|p| d.write(p));
        d.finish()
    }
}

/// A [`FileDigest`] computed as the file's bytes go by, in order.
pub struct Digester {
    h: twox_hash::xxhash3_128::Hasher,
    in_block: usize,
    size: u64,
    blocks: Vec<String>,
}

impl Default for Digester {
    fn default() -> Self {
        Digester {
            h: twox_hash::xxhash3_128::Hasher::new(),
            in_block: 0,
            size: 0,
            blocks: Vec::new(),
        }
    }
}

impl Digester {
    /// The next bytes of the file.
    pub fn write(&mut self, mut rest: &[u8]) {
        while !rest.is_empty() {
            let n = rest.len().min(BLOCK - self.in_block);
            self.h.write(&rest[..n]);
            self.in_block += n;
            self.size += n as u64;
            rest = &rest[n..];
            if self.in_block == BLOCK {
                let h = std::mem::replace(&mut self.h, twox_hash::xxhash3_128::Hasher::new());
                self.blocks.push(format!("{:032x}", h.finish_128()));
                self.in_block = 0;
            }
        }
    }

    /// The digest of everything written.
    pub fn finish(mut self) -> FileDigest {
        if self.in_block > 0 {
            self.blocks.push(format!("{:032x}", self.h.finish_128()));
        }
        FileDigest {
            size: self.size,
            blocks: self.blocks,
        }
    }
}

/// Digest of one block.
pub fn block_digest(b: &[u8]) -> String {
    format!("{:032x}", XxHash3_128::oneshot(b))
}

/// The whole manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub digest: String,
    pub block_size: usize,
    pub files: BTreeMap<String, FileDigest>,
    /// The program that wrote the images ("cryo 0.1.0"); absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// When the dump finished, in seconds since the epoch; absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            format: 1,
            digest: "xxh3-128".into(),
            block_size: BLOCK,
            files: BTreeMap::new(),
            tool: Some(format!("cryo {}", env!("CARGO_PKG_VERSION"))),
            written: None,
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

    /// Verifies every listed file: sizes first, then every block's digest, with the blocks of
    /// all files spread over `threads` (the files are mapped, not copied).
    pub fn verify(&self, dir: &Path, threads: usize) -> Result<(), ImageError> {
        self.verify_but(dir, threads, |_| false)
    }

    /// [`Manifest::verify`], except that the files `later` names get their sizes checked
    /// only: whoever reads them checks their blocks (a lazy restore's pages, which its
    /// lazy-pages daemon verifies while the tree already runs).
    pub fn verify_but(
        &self,
        dir: &Path,
        threads: usize,
        later: impl Fn(&str) -> bool,
    ) -> Result<(), ImageError> {
        // Small files (thousands of core images for a process of as many threads) are read
        // whole by the workers: an open, a read and a close each, where mapping them one by
        // one first cost more than hashing them. Large ones are mapped and checked per block.
        let mut small = Vec::new();
        let mut maps = Vec::new();
        for (name, want) in &self.files {
            let path = dir.join(name);
            if later(name) {
                open_checked(&path, want)?;
            } else if want.size <= SMALL {
                small.push((path, want));
            } else {
                let map = open_checked(&path, want)?;
                maps.push((path, want, map));
            }
        }
        enum Work {
            Small(usize),
            Block(usize, usize),
        }
        let work: Vec<Work> = (0..small.len())
            .map(Work::Small)
            .chain(maps.iter().enumerate().flat_map(|(f, (_, want, _))| {
                (0..want.blocks.len()).map(move |b| Work::Block(f, b))
            }))
            .collect();
        let next = AtomicUsize::new(0);
        let first_err = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, work.len().max(1)) {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let r = match work.get(i) {
                            None => break,
                            Some(&Work::Small(f)) => {
                                let (path, want) = &small[f];
                                check_small(path, want, &mut buf)
                            }
                            Some(&Work::Block(f, b)) => {
                                let (path, want, map) = &maps[f];
                                let bytes = map.bytes();
                                let end = ((b + 1) * BLOCK).min(bytes.len());
                                let ok = block_digest(&bytes[b * BLOCK..end]) == want.blocks[b];
                                // Read: out of cryo's RSS (it stays in the page cache).
                                map.release(b * BLOCK, end - b * BLOCK);
                                if ok {
                                    Ok(())
                                } else {
                                    Err(ImageError::Digest {
                                        path: path.clone(),
                                        what: format!("bytes {}..{end} changed", b * BLOCK),
                                    })
                                }
                            }
                        };
                        if let Err(e) = r {
                            first_err.lock().expect("lock").get_or_insert(e);
                            break;
                        }
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

/// Files up to this size are verified by reading them whole ([`check_small`]).
const SMALL: u64 = 1 << 20;

/// Reads a small listed file into `buf` and checks its size, block count and digest.
fn check_small(path: &Path, want: &FileDigest, buf: &mut Vec<u8>) -> Result<(), ImageError> {
    use std::io::Read;
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
    buf.clear();
    // One byte more than listed: a longer file is seen as such without reading it all.
    (&mut f)
        .take(want.size + 1)
        .read_to_end(buf)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
    let size = buf.len() as u64;
    if size != want.size {
        let size = f.metadata().map_or(size, |m| m.len());
        return Err(digest_err(format!(
            "size is {size} bytes, manifest says {}",
            want.size
        )));
    }
    if want.blocks.len() as u64 != size.div_ceil(BLOCK as u64) {
        return Err(digest_err("block list does not match the size".into()));
    }
    for (b, chunk) in buf.chunks(BLOCK).enumerate() {
        if block_digest(chunk) != want.blocks[b] {
            let end = b * BLOCK + chunk.len();
            return Err(digest_err(format!("bytes {}..{end} changed", b * BLOCK)));
        }
    }
    Ok(())
}

/// Opens and maps a listed file after checking its size and block count.
fn open_checked(path: &Path, want: &FileDigest) -> Result<Mapping, ImageError> {
    let digest_err = |what: String| ImageError::Digest {
        path: path.to_path_buf(),
        what,
    };
    let io = |op, source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let f = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            io("open", source)
        }
    })?;
    let size = f.metadata().map_err(|e| io("stat", e))?.len();
    if size != want.size {
        return Err(digest_err(format!(
            "size is {size} bytes, manifest says {}",
            want.size
        )));
    }
    if want.blocks.len() as u64 != size.div_ceil(BLOCK as u64) {
        return Err(digest_err("block list does not match the size".into()));
    }
    let map = Mapping::file_ro(&f, crate::num::usize_of(size)).map_err(|e| io("mmap", e))?;
    map.advise(libc::MADV_WILLNEED);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_parts_is_the_digest_of_their_concatenation() {
        let big: Vec<u8> = (0..BLOCK + 777)
            .map(|i| (i * 7 % 251).to_le_bytes()[0])
            .collect();
        for cut in [0, 1, 100, BLOCK - 3, BLOCK, BLOCK + 5, big.len()] {
            let (a, b) = big.split_at(cut);
            assert_eq!(
                FileDigest::of_parts(&[a, b]),
                FileDigest::of(&big),
                "cut {cut}"
            );
            assert_eq!(
                FileDigest::of_parts(&[&[], a, &[], b]),
                FileDigest::of(&big)
            );
        }
        assert_eq!(FileDigest::of_parts(&[]), FileDigest::of(&[]));
    }

    #[test]
    fn small_files_are_checked_whole() {
        let dir = std::env::temp_dir().join(format!("cryo-manifest-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253).to_le_bytes()[0]).collect();
        let want = FileDigest::of(&data);
        let path = dir.join("core-1.img");
        let mut buf = Vec::new();
        std::fs::write(&path, &data).unwrap();
        check_small(&path, &want, &mut buf).unwrap();
        let mut bad = data.clone();
        bad[2500] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let e = check_small(&path, &want, &mut buf).unwrap_err().to_string();
        assert!(e.contains("changed"), "{e}");
        let mut long = data.clone();
        long.push(0);
        std::fs::write(&path, &long).unwrap();
        let e = format!("{:?}", check_small(&path, &want, &mut buf).unwrap_err());
        assert!(e.contains("size is 5001 bytes"), "{e}");
        std::fs::write(&path, &data[..4000]).unwrap();
        let e = format!("{:?}", check_small(&path, &want, &mut buf).unwrap_err());
        assert!(e.contains("size is 4000 bytes"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            check_small(&path, &want, &mut buf),
            Err(ImageError::Missing { .. })
        ));
        let m = Manifest {
            format: 1,
            digest: "xxh3-128".into(),
            block_size: BLOCK,
            files: [("core-1.img".to_string(), want)].into_iter().collect(),
            tool: None,
            written: None,
        };
        std::fs::write(&path, &data).unwrap();
        m.verify(&dir, 2).unwrap();
        std::fs::write(&path, &bad).unwrap();
        assert!(m.verify(&dir, 2).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Digests must not change: manifests written by earlier versions name the same
    /// algorithm. Expected values from the reference xxh3-128 (xxhash-rust 0.8).
    #[test]
    fn block_digest_is_xxh3_128() {
        let data = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|i| (i.wrapping_mul(31) ^ (i >> 9)).to_le_bytes()[0])
                .collect()
        };
        for (n, want) in [
            (0, "99aa06d3014798d86001c324468d497f"),
            (100, "e9614ba2d15bb7c8ac2711ccb8f4a260"),
            (1000, "d7d86ea7ca07b24259d6138ebb22fa04"),
            ((4 << 20) + 12345, "064660d6bf76da87f2d7f79b9c2e9029"),
        ] {
            let d = data(n);
            assert_eq!(block_digest(&d), want, "{n} bytes");
            let mut h = XxHash3_128::new();
            d.chunks(1 << 20).for_each(|c| h.write(c));
            assert_eq!(
                format!("{:032x}", h.finish_128()),
                want,
                "{n} bytes, streamed"
            );
        }
    }
}
