//! Compressed pages images (`dump --compress`): `pages-N.img.zst` instead of CRIU's raw
//! `pages-N.img`.
//!
//! The file is a valid zstd stream: `zstd -d pages-N.img.zst` gives back exactly the raw
//! `pages-N.img` CRIU reads. It is a sequence of frames:
//!
//! * a skippable frame (magic `0x184D2A5C`) holding `CRYOPAGE`, the format version, the
//!   block size and the size of the raw page data;
//! * for every `BLOCK` (1 MiB) of raw page data (the last may be shorter), a skippable frame
//!   with the length of the zstd frame that follows and the xxh3-128 digest of the raw
//!   block, then that zstd frame (level 1; zstd stores an incompressible block as is).
//!
//! Every block is compressed and decompressed on its own, so both run on every CPU. CRIU
//! does not know the name, so it refuses such a dump (it cannot find `pages-N.img`) instead of
//! misreading it; cryo reads either name. A dump removes the other name's leftover from an
//! earlier dump into the same directory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use twox_hash::XxHash3_128;

use super::manifest::{Digester, FileDigest};
use super::ImageError;
use crate::num::{u64_of, usize_of};
use crate::sys::mem::Mapping;

/// A required plugin named in `inventory.img` of a compressed dump: CRIU 4.2 refuses to
/// restore it before creating anything ("Missing required plugin: cryo-zstd-pages") where it
/// has a plugin directory; without one it fails later, in its restorer, for want of
/// `pages-N.img`, and kills what it made. cryo ignores the entry.
pub const CRIU_MARK: &str = "cryo-zstd-pages";

/// Suffix of a compressed pages image.
pub const SUFFIX: &str = ".zst";
/// Raw bytes per compressed block.
pub const BLOCK: usize = 1 << 20;
/// zstd level: level 1 made python heaps, text and a JVM-like heap 2.2-9.9x smaller at
/// 0.25-0.56 GB/s per core on the reference VM, where lz4 left the JVM-like heap at 1.65x.
pub const LEVEL: i32 = 1;

const SKIP_MAGIC: u32 = 0x184D_2A5C;
const HEAD_MAGIC: &[u8; 8] = b"CRYOPAGE";
const VERSION: u32 = 1;
/// Skippable frame header (magic + size) + `CRYOPAGE` + version + block size + raw size.
const HEAD_LEN: usize = 8 + 8 + 4 + 4 + 8;
/// Skippable frame header + zstd frame length + digest of the raw block.
const BLOCK_HEAD_LEN: usize = 8 + 4 + 16;

/// The compressed name of pages image `name` (`pages-1.img` -> `pages-1.img.zst`).
pub fn compressed_name(name: &str) -> String {
    format!("{name}{SUFFIX}")
}

/// Is `name` a compressed pages image?
pub fn is_compressed_name(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(SUFFIX)
}

/// What the head of a compressed pages image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub block: usize,
    /// Size of the raw page data.
    pub size: u64,
}

fn invalid(path: &Path, what: String) -> ImageError {
    ImageError::Invalid {
        path: path.to_path_buf(),
        what,
    }
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Reads the head of a compressed pages image (its first `HEAD_LEN` bytes or more).
pub fn head(path: &Path, bytes: &[u8]) -> Result<Head, ImageError> {
    let bad = || {
        invalid(
            path,
            "not a compressed pages image of cryo (no CRYOPAGE head)".into(),
        )
    };
    if u32_at(bytes, 0) != Some(SKIP_MAGIC)
        || u32_at(bytes, 4) != Some(u32::try_from(HEAD_LEN - 8).expect("small"))
        || bytes.get(8..16) != Some(&HEAD_MAGIC[..])
    {
        return Err(bad());
    }
    let version = u32_at(bytes, 16).ok_or_else(bad)?;
    let block = usize_of(u64::from(u32_at(bytes, 20).ok_or_else(bad)?));
    let size = u64_at(bytes, 24).ok_or_else(bad)?;
    if version != VERSION || block == 0 || block > 64 << 20 {
        return Err(invalid(
            path,
            format!("compressed pages image of an unknown kind (version {version}, block {block}); a newer cryo wrote it"),
        ));
    }
    Ok(Head { block, size })
}

/// One block's place in the file: (zstd frame offset, frame length, digest of the raw block).
pub type BlockAt = (usize, usize, u128);

/// The blocks of a compressed pages image, checked to cover exactly `head.size` bytes.
pub fn index(path: &Path, bytes: &[u8]) -> Result<(Head, Vec<BlockAt>), ImageError> {
    let h = head(path, bytes)?;
    let n = usize_of(h.size.div_ceil(u64_of(h.block)));
    // Every block has a head in the file: a head claiming more blocks than the file can
    // hold is refused before anything is allocated for them.
    if n > bytes.len().saturating_sub(HEAD_LEN) / BLOCK_HEAD_LEN {
        return Err(invalid(
            path,
            format!(
                "the head claims {} bytes in {n} blocks, more than the file's {} bytes can hold; the image is corrupt",
                h.size,
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    let mut at = HEAD_LEN;
    for i in 0..n {
        let trunc = || ImageError::Truncated {
            path: path.to_path_buf(),
            offset: at,
            what: "compressed page block",
        };
        let fl = usize_of(u64::from(u32_at(bytes, at + 8).ok_or_else(trunc)?));
        if u32_at(bytes, at) != Some(SKIP_MAGIC)
            || u32_at(bytes, at + 4) != Some(u32::try_from(BLOCK_HEAD_LEN - 8).expect("small"))
        {
            return Err(invalid(
                path,
                format!("block {i} at byte {at}: no block head; the image is corrupt"),
            ));
        }
        let digest = u128::from_le_bytes(
            bytes
                .get(at + 12..at + BLOCK_HEAD_LEN)
                .ok_or_else(trunc)?
                .try_into()
                .expect("16 bytes"),
        );
        let start = at + BLOCK_HEAD_LEN;
        if bytes.len() < start + fl {
            return Err(trunc());
        }
        out.push((start, fl, digest));
        at = start + fl;
    }
    if at != bytes.len() {
        return Err(invalid(
            path,
            format!(
                "{} bytes after the last of its {n} blocks; the image is corrupt",
                bytes.len() - at
            ),
        ));
    }
    Ok((h, out))
}

/// A compressed pages image opened for reading block by block: the place and digest of
/// every block the reader needs, nothing decoded yet. Every size taken from the file is
/// bounded before anything is allocated for it: the block size is the one this version
/// writes, a block's frame is at most what zstd makes of a block, a block decodes into a
/// buffer of exactly its raw size (more is an error, not a bigger buffer), and only the
/// blocks holding the first `need` bytes (what the pagemap needs) are indexed.
pub struct Compressed {
    file: File,
    path: PathBuf,
    head: Head,
    /// (frame offset, frame length, digest of the raw block), for the blocks needed.
    blocks: Vec<(u64, usize, u128)>,
}

/// One thread's buffers for [`Compressed::decode`].
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
    frame: Vec<u8>,
    /// The raw bytes of the last block decoded.
    pub raw: Vec<u8>,
}

impl Compressed {
    /// Opens `path` to read its first `need` bytes of raw page data.
    pub fn open(path: &Path, need: u64) -> Result<Compressed, ImageError> {
        let io = |op, source| ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        let flen = file.metadata().map_err(|e| io("stat", e))?.len();
        let mut hb = [0u8; HEAD_LEN];
        read_at(&file, path, &mut hb, 0, "compressed pages head")?;
        let head = head(path, &hb)?;
        if head.block != BLOCK {
            return Err(invalid(
                path,
                format!(
                    "the head claims blocks of {} bytes, this version writes {BLOCK}; the image is corrupt",
                    head.block
                ),
            ));
        }
        if head.size < need {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                offset: usize_of(head.size),
                what: "page data (the pagemap needs more than the head holds)",
            });
        }
        let n = usize_of(need.div_ceil(u64_of(BLOCK)));
        // A block's frame is never longer than what zstd makes of a whole block.
        let max_frame = zstd::zstd_safe::compress_bound(BLOCK);
        let mut blocks = Vec::with_capacity(n.min(usize_of(flen / u64_of(BLOCK_HEAD_LEN))));
        let mut at = u64_of(HEAD_LEN);
        let mut bh = [0u8; BLOCK_HEAD_LEN];
        for i in 0..n {
            read_at(&file, path, &mut bh, at, "compressed page block head")?;
            if u32_at(&bh, 0) != Some(SKIP_MAGIC)
                || u32_at(&bh, 4) != Some(u32::try_from(BLOCK_HEAD_LEN - 8).expect("small"))
            {
                return Err(invalid(
                    path,
                    format!("block {i} at byte {at}: no block head; the image is corrupt"),
                ));
            }
            let fl = usize_of(u64::from(u32_at(&bh, 8).expect("in the head")));
            if fl > max_frame {
                return Err(invalid(
                    path,
                    format!(
                        "block {i} at byte {at} claims a frame of {fl} bytes, more than a block of {BLOCK} bytes compresses to ({max_frame}); the image is corrupt"
                    ),
                ));
            }
            let digest = u128::from_le_bytes(bh[12..].try_into().expect("16 bytes"));
            let start = at + u64_of(BLOCK_HEAD_LEN);
            if start + u64_of(fl) > flen {
                return Err(ImageError::Truncated {
                    path: path.to_path_buf(),
                    offset: usize_of(flen),
                    what: "compressed page block",
                });
            }
            blocks.push((start, fl, digest));
            at = start + u64_of(fl);
        }
        Ok(Compressed {
            file,
            path: path.to_path_buf(),
            head,
            blocks,
        })
    }

    /// Size of the raw page data (the head's).
    pub fn size(&self) -> u64 {
        self.head.size
    }

    /// Bytes of raw page data per block.
    pub fn block(&self) -> usize {
        self.head.block
    }

    /// Number of blocks indexed (those holding the bytes the reader needs).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Fresh buffers for one decoding thread.
    pub fn decoder(&self) -> Result<Decoder, ImageError> {
        Ok(Decoder {
            zstd: zstd::bulk::Decompressor::new().map_err(|source| ImageError::Io {
                path: self.path.clone(),
                op: "zstd",
                source,
            })?,
            frame: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// Decodes block `i` into `d.raw` (its raw size, at most one block), checked against its
    /// digest; returns the raw offset of its first byte.
    pub fn decode(&self, i: usize, d: &mut Decoder) -> Result<u64, ImageError> {
        let (o, fl, want) = self.blocks[i];
        let raw_at = u64_of(i) * u64_of(self.head.block);
        let len = usize_of((self.head.size - raw_at).min(u64_of(self.head.block)));
        let raw_end = raw_at + u64_of(len);
        let bad = |why: String| {
            invalid(
                &self.path,
                format!("block {i} (page data bytes {raw_at}..{raw_end}) is corrupt: {why}"),
            )
        };
        d.frame.resize(fl, 0);
        read_at(
            &self.file,
            &self.path,
            &mut d.frame,
            o,
            "compressed page block",
        )?;
        d.raw.resize(len, 0);
        match d.zstd.decompress_to_buffer(&d.frame, &mut d.raw[..]) {
            Ok(n) if n != len => Err(bad(format!("it holds {n} bytes, {len} expected"))),
            Ok(_) if XxHash3_128::oneshot(&d.raw) != want => {
                Err(bad("its digest does not match".into()))
            }
            Ok(_) => Ok(raw_at),
            Err(e) => Err(bad(format!("{e} (a block holds at most {len} bytes)"))),
        }
    }
}

fn read_at(
    f: &File,
    path: &Path,
    buf: &mut [u8],
    at: u64,
    what: &'static str,
) -> Result<(), ImageError> {
    f.read_exact_at(buf, at).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            ImageError::Truncated {
                path: path.to_path_buf(),
                offset: usize_of(at),
                what,
            }
        } else {
            ImageError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            }
        }
    })
}

/// Decompresses the whole compressed pages image `path` into fresh memory, every block
/// checked against its digest, on `threads` threads. Returns the raw page data.
pub fn decode(path: &Path, threads: usize) -> Result<Mapping, ImageError> {
    let io = |op, source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    // The size the head claims is bounded by the file: every block has a head in it.
    let flen = std::fs::metadata(path).map_err(|e| io("stat", e))?.len();
    let mut hb = [0u8; HEAD_LEN];
    let f = File::open(path).map_err(|e| io("open", e))?;
    read_at(&f, path, &mut hb, 0, "compressed pages head")?;
    let h = head(path, &hb)?;
    let n = h.size.div_ceil(u64_of(h.block.max(1)));
    if n > flen.saturating_sub(u64_of(HEAD_LEN)) / u64_of(BLOCK_HEAD_LEN) {
        return Err(invalid(
            path,
            format!(
                "the head claims {} bytes in {n} blocks, more than the file's {flen} bytes can hold; the image is corrupt",
                h.size
            ),
        ));
    }
    let z = Compressed::open(path, h.size)?;
    if z.size() == 0 {
        return Mapping::file_ro(&f, 0).map_err(|e| io("mmap", e));
    }
    let mut out = Mapping::anon_shared(usize_of(z.size())).map_err(|e| io("mmap", e))?;
    let first_err: Mutex<Option<ImageError>> = Mutex::new(None);
    let chunks = Mutex::new(out.bytes_mut().chunks_mut(z.block()).enumerate());
    let work = || {
        let mut d = match z.decoder() {
            Ok(d) => d,
            Err(e) => {
                first_err.lock().expect("lock").get_or_insert(e);
                return;
            }
        };
        loop {
            if first_err.lock().expect("lock").is_some() {
                return;
            }
            let Some((i, dst)) = chunks.lock().expect("lock").next() else {
                return;
            };
            match z.decode(i, &mut d) {
                Ok(_) => dst.copy_from_slice(&d.raw),
                Err(e) => {
                    first_err.lock().expect("lock").get_or_insert(e);
                    return;
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.clamp(1, z.blocks().max(1)) {
            s.spawn(work);
        }
        work();
    });
    match first_err.into_inner().expect("lock") {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The file a pages image `name` (`pages-N.img`) of `dir` was written to: `pages-N.img.zst`
/// when the dump that wrote `dir` compressed (its inventory says so), else `pages-N.img`.
/// Whichever other file is there (a leftover) is not read.
pub fn file_of(dir: &super::ImageDir, name: &str) -> Result<(PathBuf, bool), ImageError> {
    Ok(if dir.pages_compressed()? {
        (dir.file(&compressed_name(name)), true)
    } else {
        (dir.file(name), false)
    })
}

/// The raw page data of pages image `name` of `dir`, under the name the dump wrote it (see
/// [`file_of`]): a read-only mapping of the raw file, or the whole data decompressed.
/// `Ok(None)` when it is not there.
pub fn load(
    dir: &super::ImageDir,
    name: &str,
    threads: usize,
) -> Result<Option<(Mapping, bool)>, ImageError> {
    let (path, compressed) = file_of(dir, name)?;
    let io = |op, source| ImageError::Io {
        path: path.clone(),
        op,
        source,
    };
    if compressed {
        if !path.exists() {
            return Ok(None);
        }
        return decode(&path, threads).map(|m| Some((m, true)));
    }
    match File::open(&path) {
        Ok(f) => {
            let len = usize_of(f.metadata().map_err(|e| io("stat", e))?.len());
            Ok(Some((
                Mapping::file_ro(&f, len).map_err(|e| io("mmap", e))?,
                false,
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("open", e)),
    }
}

/// Writes a compressed pages image block by block, in order, from any number of threads:
/// each thread compresses the blocks it takes (in increasing order) and hands them to
/// [`Writer::put`], which appends them in block order and digests the file for the manifest.
/// A block that comes before its turn waits in memory (a thread does not wait for a slower
/// one), up to [`Writer::AHEAD`] blocks ahead of the next one to write.
pub struct Writer<'a> {
    file: &'a File,
    path: &'a Path,
    state: Mutex<WState>,
    turn: Condvar,
}

struct WState {
    next: usize,
    off: u64,
    digest: Digester,
    failed: bool,
    /// Encoded blocks waiting for their turn.
    ready: std::collections::BTreeMap<usize, Vec<u8>>,
}

impl<'a> Writer<'a> {
    /// How far ahead of the next block to write a block may be handed in without waiting.
    pub const AHEAD: usize = 8;

    /// Starts the image in `file` (empty) for `size` bytes of raw page data.
    pub fn new(file: &'a File, path: &'a Path, size: u64) -> Result<Writer<'a>, ImageError> {
        let mut h = Vec::with_capacity(HEAD_LEN);
        h.extend_from_slice(&SKIP_MAGIC.to_le_bytes());
        h.extend_from_slice(&u32::try_from(HEAD_LEN - 8).expect("small").to_le_bytes());
        h.extend_from_slice(HEAD_MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&u32::try_from(BLOCK).expect("small").to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        file.write_all_at(&h, 0).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "write",
            source,
        })?;
        let mut digest = Digester::default();
        digest.write(&h);
        Ok(Writer {
            file,
            path,
            state: Mutex::new(WState {
                next: 0,
                off: u64_of(h.len()),
                digest,
                failed: false,
                ready: Default::default(),
            }),
            turn: Condvar::new(),
        })
    }

    /// A compressor for one thread.
    pub fn compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
        zstd::bulk::Compressor::new(LEVEL)
    }

    /// Compresses a raw block into `buf` (head + zstd frame), ready for [`Writer::put`].
    pub fn encode(
        c: &mut zstd::bulk::Compressor<'static>,
        raw: &[u8],
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        buf.resize(
            BLOCK_HEAD_LEN + zstd::zstd_safe::compress_bound(raw.len()),
            0,
        );
        let n = c.compress_to_buffer(raw, &mut buf[BLOCK_HEAD_LEN..])?;
        buf.truncate(BLOCK_HEAD_LEN + n);
        buf[0..4].copy_from_slice(&SKIP_MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(
            &u32::try_from(BLOCK_HEAD_LEN - 8)
                .expect("small")
                .to_le_bytes(),
        );
        let n32 = u32::try_from(n).map_err(|_| std::io::Error::other("block too large"))?;
        buf[8..12].copy_from_slice(&n32.to_le_bytes());
        buf[12..BLOCK_HEAD_LEN].copy_from_slice(&XxHash3_128::oneshot(raw).to_le_bytes());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WState> {
        // A thread that panicked holding the lock left nothing half-done that matters: the
        // dump fails (`fail`) and the image is not used.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands in encoded block `i` (taking its buffer, leaving an empty one in its place);
    /// it is written once blocks `0..i` are. Waits only while `i` is more than
    /// [`Writer::AHEAD`] blocks ahead. Returns false (writing nothing) when another thread
    /// failed: the caller stops.
    pub fn put(&self, i: usize, encoded: &mut Vec<u8>) -> Result<bool, ImageError> {
        let mut st = self.lock();
        while i >= st.next + Self::AHEAD && !st.failed {
            st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.failed {
            return Ok(false);
        }
        st.ready.insert(i, std::mem::take(encoded));
        let mut wrote = false;
        loop {
            let n = st.next;
            let Some(buf) = st.ready.remove(&n) else {
                break;
            };
            if let Err(source) = self.file.write_all_at(&buf, st.off) {
                st.failed = true;
                self.turn.notify_all();
                return Err(ImageError::Io {
                    path: self.path.to_path_buf(),
                    op: "write",
                    source,
                });
            }
            st.digest.write(&buf);
            st.off += u64_of(buf.len());
            st.next += 1;
            wrote = true;
            // Its buffer back to this thread (the caller reuses it).
            if encoded.capacity() < buf.capacity() {
                *encoded = buf;
                encoded.clear();
            }
        }
        if wrote {
            self.turn.notify_all();
        }
        Ok(true)
    }

    /// Makes every thread waiting in [`Writer::put`] give up (this thread failed).
    pub fn fail(&self) {
        self.lock().failed = true;
        self.turn.notify_all();
    }

    /// The digest of the whole file, once every block is in.
    pub fn finish(self) -> FileDigest {
        self.state
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .digest
            .finish()
    }
}

/// Compresses `raw` (a whole pages image held in memory) into `file`; returns its digest.
pub fn write_all(file: &File, path: &Path, raw: &[u8]) -> Result<FileDigest, ImageError> {
    let io = |op, source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let w = Writer::new(file, path, u64_of(raw.len()))?;
    let mut c = Writer::compressor().map_err(|e| io("zstd", e))?;
    let mut buf = Vec::new();
    for (i, b) in raw.chunks(BLOCK).enumerate() {
        Writer::encode(&mut c, b, &mut buf).map_err(|e| io("zstd", e))?;
        w.put(i, &mut buf)?;
    }
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_a_zstd_stream_and_corruption_is_named() {
        let dir = std::env::temp_dir().join(format!("cryo-pages-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw: Vec<u8> = (0..BLOCK * 2 + 12288)
            .map(|i| (i / 4096 % 7 + i % 3).to_le_bytes()[0])
            .collect();
        let path = dir.join("pages-1.img.zst");
        let f = File::create(&path).unwrap();
        let d = write_all(&f, &path, &raw).unwrap();
        drop(f);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(d, FileDigest::of(&bytes));
        assert!(bytes.len() * 10 < raw.len());
        // A plain zstd decoder reads it as the raw pages image.
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), raw);
        let m = decode(&path, 2).unwrap();
        assert_eq!(m.bytes(), &raw[..]);
        // Block by block, only the blocks the reader needs.
        let z = Compressed::open(&path, u64_of(BLOCK) + 1).unwrap();
        assert_eq!(z.blocks(), 2);
        let mut d = z.decoder().unwrap();
        assert_eq!(z.decode(1, &mut d).unwrap(), u64_of(BLOCK));
        assert_eq!(d.raw, raw[BLOCK..2 * BLOCK]);
        let e = Compressed::open(&path, u64_of(raw.len()) + 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        // Flip a byte inside the second block's frame.
        let (_, blocks) = index(&path, &bytes).unwrap();
        let mut bad = bytes.clone();
        bad[blocks[1].0 + blocks[1].1 / 2] ^= 0x55;
        std::fs::write(&path, &bad).unwrap();
        let e = decode(&path, 2).err().unwrap().to_string();
        assert!(e.contains("block 1 ") && e.contains("corrupt"), "{e}");
        // Truncated.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = decode(&path, 1).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Cut inside a block head: an error, not a panic.
        let cut = blocks[1].0 - BLOCK_HEAD_LEN + 14;
        let e = index(&path, &bytes[..cut]).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        // A head claiming an enormous size: refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = index(&path, &huge).err().unwrap().to_string();
        assert!(e.contains("more than the file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Sizes taken from a hostile image are errors, never allocations: a head claiming huge
    /// blocks, a block head claiming a huge frame, a frame that decodes to more than a block.
    #[test]
    fn hostile_sizes_are_refused() {
        let dir = std::env::temp_dir().join(format!("cryo-pages-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = vec![7u8; BLOCK + 8192];
        let path = dir.join("pages-1.img.zst");
        let f = File::create(&path).unwrap();
        write_all(&f, &path, &raw).unwrap();
        drop(f);
        let good = std::fs::read(&path).unwrap();
        let need = u64_of(raw.len());

        let mut b = good.clone();
        b[20..24].copy_from_slice(&(64u32 << 20).to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let e = Compressed::open(&path, need).err().unwrap().to_string();
        assert!(e.contains("blocks of 67108864 bytes"), "{e}");

        let mut b = good.clone();
        b[HEAD_LEN + 8..HEAD_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        let e = Compressed::open(&path, need).err().unwrap().to_string();
        assert!(e.contains("claims a frame of 4294967295 bytes"), "{e}");

        // Block 0 replaced by a frame of 64 MiB of zeros (a few KiB compressed).
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
        let (_, blocks) = index(&path, &good).unwrap();
        let mut b = good[..HEAD_LEN].to_vec();
        b.extend_from_slice(&good[HEAD_LEN..HEAD_LEN + 8]);
        b.extend_from_slice(&u32::try_from(bomb.len()).unwrap().to_le_bytes());
        b.extend_from_slice(&good[HEAD_LEN + 12..HEAD_LEN + BLOCK_HEAD_LEN]);
        b.extend_from_slice(&bomb);
        b.extend_from_slice(&good[blocks[0].0 + blocks[0].1..]);
        std::fs::write(&path, &b).unwrap();
        let z = Compressed::open(&path, need).unwrap();
        let mut d = z.decoder().unwrap();
        let e = z.decode(0, &mut d).err().unwrap().to_string();
        assert!(e.contains("block 0 ") && e.contains("corrupt"), "{e}");
        assert!(d.raw.capacity() <= BLOCK, "{}", d.raw.capacity());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
