//! CRIU's on-disk image format: the only code that sees magic numbers and entry framing.
//!
//! An image file is `[IMG_COMMON_MAGIC] TYPE_MAGIC { u32 size, protobuf[size] }*` (inventory
//! has no common magic, stats files use the service magic, pages files are raw). Every image
//! cryo writes is also recorded in `cryo-manifest.json` (size + xxh3-128 digest per block) so a
//! restore can refuse a truncated or bit-flipped image before creating anything; CRIU's tools
//! ignore that file.

pub mod manifest;
pub mod pages;
pub mod pb;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;

use crate::num::usize_of;

pub use manifest::Manifest;

/// Head magic of ordinary images.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Head magic of service files (stats-*, irmap-cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// Largest single entry a reader accepts (a hostile size field cannot make us allocate more).
const MAX_ENTRY: usize = 64 << 20;

/// How an image file begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `IMG_COMMON_MAGIC` then the type magic.
    Common(u32),
    /// Only the type magic (inventory.img).
    Bare(u32),
    /// `IMG_SERVICE_MAGIC` then the type magic (stats-*).
    Service(u32),
}

/// One kind of image file: its name pattern, head and the protobuf message of its entries.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// File name prefix (`core-`, `files.img`, ...), used by `cryo show` to recognise files.
    pub name: &'static str,
    pub head: Head,
    /// Fully qualified protobuf message of the entries (the first entry of pagemap images is
    /// a `pagemap_head`).
    pub message: &'static str,
}

macro_rules! kinds {
    ($($id:ident = $name:literal, $head:ident($magic:literal), $msg:literal;)*) => {
        $(pub const $id: Kind = Kind { name: $name, head: Head::$head($magic), message: $msg };)*
        /// Every image kind cryo knows, for `cryo show`.
        pub const ALL: &[Kind] = &[$($id),*];
    };
}

kinds! {
    INVENTORY = "inventory", Bare(0x5831_3116), "inventory_entry";
    PSTREE = "pstree", Common(0x5027_3030), "pstree_entry";
    CORE = "core", Common(0x5505_3847), "core_entry";
    IDS = "ids", Common(0x5443_2030), "task_kobj_ids_entry";
    MM = "mm", Common(0x5749_2820), "mm_entry";
    PAGEMAP = "pagemap", Common(0x5608_4025), "pagemap_entry";
    SHMEM_PAGEMAP = "pagemap-shmem", Common(0x5608_4025), "pagemap_entry";
    FDINFO = "fdinfo", Common(0x5621_3732), "fdinfo_entry";
    FILES = "files", Common(0x5630_3138), "file_entry";
    FS = "fs", Common(0x5140_3912), "fs_entry";
    CREDS = "creds", Common(0x5402_3547), "creds_entry";
    PIPES_DATA = "pipes-data", Common(0x5645_3709), "pipe_data_entry";
    FIFO_DATA = "fifo-data", Common(0x5933_3054), "pipe_data_entry";
    SK_QUEUES = "sk-queues", Common(0x5626_4026), "sk_packet_entry";
    TCP_STREAM = "tcp-stream", Common(0x5146_5506), "tcp_stream_entry";
    TTY_INFO = "tty-info", Common(0x5945_3036), "tty_info_entry";
    TTY_DATA = "tty-data", Common(0x5941_3026), "tty_data_entry";
    FILE_LOCKS = "filelocks", Common(0x5432_3616), "file_lock_entry";
    GHOST_FILE = "ghost-file", Common(0x5258_3605), "ghost_file_entry";
    REMAP_FPATH = "remap-fpath", Common(0x5913_3954), "remap_file_path_entry";
    MEMFD_INODE = "memfd", Common(0x4845_3499), "memfd_inode_entry";
    MNTS = "mountpoints", Common(0x5556_3928), "mnt_entry";
    NETDEV = "netdev", Common(0x5737_3951), "net_device_entry";
    NETNS = "netns", Common(0x5593_3752), "netns_entry";
    UTSNS = "utsns", Common(0x5447_3203), "utsns_entry";
    IPC_VAR = "ipcns-var", Common(0x5311_5007), "ipc_var_entry";
    IPCNS_SHM = "ipcns-shm", Common(0x4628_3044), "ipc_shm_entry";
    IPCNS_MSG = "ipcns-msg", Common(0x5545_3737), "ipc_msg_entry";
    IPCNS_SEM = "ipcns-sem", Common(0x5957_3019), "ipc_sem_entry";
    IPCNS_MQ = "ipcns-mq", Common(0x6372_7971), "cryo_mqueue_entry";
    USERNS = "userns", Common(0x5547_4906), "userns_entry";
    TIMENS = "timens", Common(0x4311_4433), "timens_entry";
    PIDNS = "pidns", Common(0x6115_7326), "pidns_entry";
    CGROUP = "cgroup", Common(0x5938_3330), "cgroup_entry";
    SECCOMP = "seccomp", Common(0x6441_3049), "seccomp_entry";
    APPARMOR = "apparmor", Common(0x5942_3047), "apparmor_entry";
    CPUINFO = "cpuinfo", Common(0x6140_4013), "cpuinfo_entry";
    BINFMT_MISC = "binfmt-misc", Common(0x6734_3323), "binfmt_misc_entry";
    STATS = "stats", Service(0x5709_3306), "stats_entry";
}

/// Error reading or writing an image; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a {expected} image (magic {found:#010x}, expected {want:#010x})")]
    BadMagic {
        path: PathBuf,
        expected: &'static str,
        found: u32,
        want: u32,
    },
    #[error("{path}: truncated at byte {offset} ({what})")]
    Truncated {
        path: PathBuf,
        offset: usize,
        what: &'static str,
    },
    #[error("{path}: entry at byte {offset} is not a valid {message}")]
    Decode {
        path: PathBuf,
        offset: usize,
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: image is missing")]
    Missing { path: PathBuf },
    #[error(
        "{path}: does not match cryo-manifest.json ({what}); the image is corrupt or was modified"
    )]
    Digest { path: PathBuf, what: String },
}

/// A directory of images being written (dump) or read (restore).
pub struct ImageDir {
    pub path: PathBuf,
    /// Digests of everything written so far (dump side).
    written: Mutex<Manifest>,
    /// Restore side: the files cryo-manifest.json lists. An optional image it does not list
    /// is left over from an older dump into the same directory and is not read.
    listed: Option<std::collections::BTreeSet<String>>,
    /// Dump side, `--compress`: pages images are written compressed (`pages`).
    compress: std::sync::atomic::AtomicBool,
    /// Restore side: did the dump write the pages images compressed (its inventory)?
    pages_compressed: std::sync::OnceLock<bool>,
}

impl ImageDir {
    /// Opens (creating if needed, mode 0700) a directory to dump into.
    pub fn create(path: &Path) -> Result<ImageDir, ImageError> {
        let io = |op, source| ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| io("mkdir", e))?;
        }
        let meta = std::fs::metadata(path).map_err(|e| io("stat", e))?;
        if !meta.is_dir() {
            return Err(ImageError::Invalid {
                path: path.to_path_buf(),
                what: "not a directory".into(),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("chmod 0700", e))?;
        }
        Ok(ImageDir {
            path: path.to_path_buf(),
            written: Mutex::new(Manifest::default()),
            listed: None,
            compress: false.into(),
            pages_compressed: std::sync::OnceLock::new(),
        })
    }

    /// Opens an existing directory to restore from.
    pub fn open(path: &Path) -> Result<ImageDir, ImageError> {
        if !path.is_dir() {
            return Err(ImageError::Missing {
                path: path.to_path_buf(),
            });
        }
        let listed = Manifest::load(path)
            .ok()
            .flatten()
            .map(|m| m.files.into_keys().collect());
        Ok(ImageDir {
            path: path.to_path_buf(),
            written: Mutex::new(Manifest::default()),
            listed,
            compress: false.into(),
            pages_compressed: std::sync::OnceLock::new(),
        })
    }

    /// An image present in the directory but not written by the dump that made the
    /// manifest (a leftover of an earlier dump into the same directory).
    fn stale(&self, name: &str) -> bool {
        let stale = self.listed.as_ref().is_some_and(|l| !l.contains(name));
        if stale && self.file(name).exists() {
            tracing::info!(
                image = %name,
                "not in cryo-manifest.json (left by an earlier dump); ignored"
            );
        }
        stale
    }

    /// `dump --compress`: write the pages images of this directory compressed.
    pub fn set_compress(&self, on: bool) {
        self.compress
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Are pages images written compressed (`pages-N.img.zst`)?
    pub fn compress(&self) -> bool {
        self.compress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Restore side: were the pages images of this directory written compressed
    /// (`pages-N.img.zst`)? What the dump wrote says so: its inventory.img names
    /// [`pages::CRIU_MARK`]. Which files happen to exist does not matter.
    pub fn pages_compressed(&self) -> Result<bool, ImageError> {
        if let Some(&c) = self.pages_compressed.get() {
            return Ok(c);
        }
        let c = self
            .read_opt::<pb::InventoryEntry>("inventory.img", INVENTORY)?
            .and_then(|v| v.into_iter().next())
            .and_then(|i| i.plugins_entry)
            .is_some_and(|e| e.plugins.iter().any(|p| p == pages::CRIU_MARK));
        Ok(*self.pages_compressed.get_or_init(|| c))
    }

    /// Creates pages image `name` (`pages-N.img`) under the name this directory writes it
    /// with (compressed: `pages-N.img.zst`), removing the other name's leftover of an
    /// earlier dump. Returns the file and the name it has.
    pub fn create_pages(&self, name: &str) -> Result<(File, String), ImageError> {
        let (this, other) = if self.compress() {
            (pages::compressed_name(name), name.to_string())
        } else {
            (name.to_string(), pages::compressed_name(name))
        };
        match std::fs::remove_file(self.file(&other)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(ImageError::Io {
                    path: self.file(&other),
                    op: "remove",
                    source: e,
                })
            }
            _ => {}
        }
        Ok((self.create_file(&this)?, this))
    }

    /// Writes pages image `name` holding `bytes`, compressed when this directory compresses,
    /// and records its digest.
    pub fn write_pages(&self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        if !self.compress() {
            // removes a compressed leftover, then writes as before
            drop(self.create_pages(name)?);
            return self.write_raw(name, bytes);
        }
        let (f, this) = self.create_pages(name)?;
        let d = pages::write_all(&f, &self.file(&this), bytes)?;
        self.record(&this, d);
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates `name` (mode 0600, truncating) for writing raw bytes.
    pub fn create_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.file(name);
        OpenOptions::new()
            .read(true) // the pages image is also mapped read-write
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ImageError::Io {
                path,
                op: "create",
                source,
            })
    }

    /// Records the digest of a file written outside [`ImageDir::write`] (pages images).
    pub fn record(&self, name: &str, entry: manifest::FileDigest) {
        self.written
            .lock()
            .expect("manifest lock")
            .files
            .insert(name.to_string(), entry);
    }

    /// Whether this dump wrote (or recorded) `name` already (dump side; a file an earlier
    /// dump left in the directory does not count).
    pub fn written_now(&self, name: &str) -> bool {
        self.written
            .lock()
            .expect("manifest lock")
            .files
            .contains_key(name)
    }

    /// Writes a whole image: head for `kind`, then every message length-prefixed.
    pub fn write<M: Message>(
        &self,
        name: &str,
        kind: Kind,
        entries: &[M],
    ) -> Result<(), ImageError> {
        let mut buf = head(kind);
        for e in entries {
            buf.extend_from_slice(&frame_len(e.encoded_len()));
            e.encode(&mut buf).expect("Vec grows");
        }
        self.write_raw(name, &buf)
    }

    /// Writes raw bytes as image `name` and records its digest.
    pub fn write_raw(&self, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.file(name);
        let mut w = BufWriter::new(self.create_file(name)?);
        w.write_all(bytes)
            .and_then(|_| w.flush())
            .map_err(|source| ImageError::Io {
                path,
                op: "write",
                source,
            })?;
        self.record(name, manifest::FileDigest::of(bytes));
        Ok(())
    }

    /// Writes `cryo-manifest.json` with every image recorded so far.
    pub fn finish(&self) -> Result<(), ImageError> {
        let mut m = self.written.lock().expect("manifest lock");
        m.written = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        let json = serde_json::to_vec_pretty(&*m).expect("manifest serializes");
        let path = self.file(manifest::NAME);
        let mut f = self.create_file(manifest::NAME)?;
        f.write_all(&json).map_err(|source| ImageError::Io {
            path,
            op: "write",
            source,
        })
    }

    /// Reads a raw image (no framing: iproute2 dumps, firewall text). A missing file, or one
    /// not listed in the manifest, is `None`.
    pub fn read_raw_opt(&self, name: &str) -> Result<Option<Vec<u8>>, ImageError> {
        if self.stale(name) {
            return Ok(None);
        }
        read_opt_bytes(&self.file(name))
    }

    /// Reads every entry of image `name`, which must be of `kind`. A missing file is `None`.
    pub fn read_opt<M: Message + Default>(
        &self,
        name: &str,
        kind: Kind,
    ) -> Result<Option<Vec<M>>, ImageError> {
        let path = self.file(name);
        if self.stale(name) {
            return Ok(None);
        }
        let Some(bytes) = read_opt_bytes(&path)? else {
            return Ok(None);
        };
        decode_all(&path, kind, &bytes).map(Some)
    }

    /// Reads an image whose entries are followed by raw data (pipes-data, fifo-data,
    /// sk-queues). A missing file is an empty list.
    pub fn read_with_data<M: Message + Default>(
        &self,
        name: &str,
        kind: Kind,
    ) -> Result<Vec<(M, Vec<u8>)>, ImageError> {
        let path = self.file(name);
        if self.stale(name) {
            return Ok(Vec::new());
        }
        let Some(bytes) = read_opt_bytes(&path)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (off, payload, data) in entries_with_data(&path, kind, &bytes)? {
            let m = M::decode(payload).map_err(|source| ImageError::Decode {
                path: path.clone(),
                offset: off,
                message: kind.message,
                source,
            })?;
            out.push((m, data.to_vec()));
        }
        Ok(out)
    }

    /// Maps image `name` read-only (None when missing or stale), for a caller that decodes
    /// the entries itself with [`entries_with_data`] and uses the raw data that follows them
    /// in place (TCP queues can be megabytes: no copy, no fresh memory).
    pub fn map(&self, name: &str) -> Result<Option<crate::sys::mem::Mapping>, ImageError> {
        if self.stale(name) {
            return Ok(None);
        }
        let path = self.file(name);
        let io = |op, source| ImageError::Io {
            path: path.clone(),
            op,
            source,
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", e)),
        };
        let len = usize_of(f.metadata().map_err(|e| io("stat", e))?.len());
        crate::sys::mem::Mapping::file_ro(&f, len)
            .map(Some)
            .map_err(|e| io("mmap", e))
    }

    /// Writes an image whose entries are each followed by raw data.
    pub fn write_with_data<M: Message>(
        &self,
        name: &str,
        kind: Kind,
        entries: &[(M, Vec<u8>)],
    ) -> Result<(), ImageError> {
        let mut buf = head(kind);
        for (e, data) in entries {
            buf.extend_from_slice(&frame_len(e.encoded_len()));
            e.encode(&mut buf).expect("Vec grows");
            buf.extend_from_slice(data);
        }
        self.write_raw(name, &buf)
    }

    /// Writes image `path` of `kind` with one entry `e` followed by `data` (as
    /// [`ImageDir::write_with_data`] with one entry), without copying `data`: usable from a
    /// thread of its own, the caller records the digest returned ([`ImageDir::record`]).
    pub fn write_one_with_data_at<M: Message>(
        path: &Path,
        kind: Kind,
        e: &M,
        data: &[u8],
    ) -> Result<manifest::FileDigest, ImageError> {
        let mut buf = head(kind);
        buf.extend_from_slice(&frame_len(e.encoded_len()));
        e.encode(&mut buf).expect("Vec grows");
        let io = |op, source| ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        f.write_all(&buf)
            .and_then(|()| f.write_all(data))
            .map_err(|e| io("write", e))?;
        Ok(manifest::FileDigest::of_parts(&[&buf, data]))
    }

    /// Writes an image of `kind` whose first entry is `first` (followed by `data`) and whose
    /// other entries are of another message type, each followed by its raw bytes (a sparse
    /// ghost file: its `ghost_file_entry`, then one `ghost_chunk_entry` per data extent).
    pub fn write_mixed<F: Message, M: Message>(
        &self,
        name: &str,
        kind: Kind,
        first: (&F, &[u8]),
        rest: &[(M, &[u8])],
    ) -> Result<(), ImageError> {
        let mut buf = head(kind);
        buf.extend_from_slice(&frame_len(first.0.encoded_len()));
        first.0.encode(&mut buf).expect("Vec grows");
        buf.extend_from_slice(first.1);
        for (e, data) in rest {
            buf.extend_from_slice(&frame_len(e.encoded_len()));
            e.encode(&mut buf).expect("Vec grows");
            buf.extend_from_slice(data);
        }
        self.write_raw(name, &buf)
    }

    /// Reads an image written by [`ImageDir::write_mixed`]: the first entry and its data,
    /// then the other entries with theirs. `None` if the file does not exist.
    #[allow(clippy::type_complexity)]
    pub fn read_mixed<F: Message + Default, M: Message + Default>(
        &self,
        name: &str,
        kind: Kind,
    ) -> Result<Option<((F, Vec<u8>), Vec<(M, Vec<u8>)>)>, ImageError> {
        let path = self.file(name);
        if self.stale(name) {
            return Ok(None);
        }
        let Some(bytes) = read_opt_bytes(&path)? else {
            return Ok(None);
        };
        let framed = entries_with_data(&path, kind, &bytes)?;
        let Some(((off, payload, data), rest)) = framed.split_first() else {
            return Err(ImageError::Invalid {
                path,
                what: "the image has no entry".into(),
            });
        };
        let decode_err = |offset: usize, message: &'static str| {
            let path = path.clone();
            move |source| ImageError::Decode {
                path,
                offset,
                message,
                source,
            }
        };
        let first = F::decode(*payload).map_err(decode_err(*off, kind.message))?;
        let mut out = Vec::with_capacity(rest.len());
        for (off, payload, data) in rest {
            let m = M::decode(*payload).map_err(decode_err(*off, "chunk entry"))?;
            out.push((m, data.to_vec()));
        }
        Ok(Some(((first, data.to_vec()), out)))
    }

    /// Writes a pagemap image: a `pagemap_head` naming the pages image, then the entries.
    pub fn write_pagemap(
        &self,
        name: &str,
        pages_id: u32,
        entries: &[pb::PagemapEntry],
    ) -> Result<(), ImageError> {
        let mut buf = head(PAGEMAP);
        let head = pb::PagemapHead { pages_id };
        buf.extend_from_slice(&frame_len(head.encoded_len()));
        head.encode(&mut buf).expect("Vec grows");
        for e in entries {
            buf.extend_from_slice(&frame_len(e.encoded_len()));
            e.encode(&mut buf).expect("Vec grows");
        }
        self.write_raw(name, &buf)
    }

    /// Reads a pagemap image: (pages image id, entries). A missing file is `None`.
    pub fn read_pagemap(
        &self,
        name: &str,
    ) -> Result<Option<(u32, Vec<pb::PagemapEntry>)>, ImageError> {
        let path = self.file(name);
        let Some(raw) = read_opt_bytes(&path)? else {
            return Ok(None);
        };
        decode_pagemap(&path, &raw).map(Some)
    }

    /// Like [`ImageDir::read_opt`] but the image must exist.
    pub fn read<M: Message + Default>(&self, name: &str, kind: Kind) -> Result<Vec<M>, ImageError> {
        self.read_opt(name, kind)?
            .ok_or_else(|| ImageError::Missing {
                path: self.file(name),
            })
    }

    /// Reads an image that must hold exactly one entry.
    pub fn read_one<M: Message + Default>(&self, name: &str, kind: Kind) -> Result<M, ImageError> {
        let mut v = self.read::<M>(name, kind)?;
        if v.len() != 1 {
            return Err(ImageError::Invalid {
                path: self.file(name),
                what: format!("expected one {} entry, found {}", kind.message, v.len()),
            });
        }
        Ok(v.remove(0))
    }
}

/// Decodes every entry of an image of `kind` held in `bytes` (`path` names it in errors).
pub fn decode_all<M: Message + Default>(
    path: &Path,
    kind: Kind,
    bytes: &[u8],
) -> Result<Vec<M>, ImageError> {
    let mut out = Vec::new();
    for (off, payload) in entries(path, kind, bytes)? {
        out.push(M::decode(payload).map_err(|source| ImageError::Decode {
            path: path.to_path_buf(),
            offset: off,
            message: kind.message,
            source,
        })?);
    }
    Ok(out)
}

/// Decodes a pagemap image held in `bytes`: (pages image id, entries).
pub fn decode_pagemap(
    path: &Path,
    bytes: &[u8],
) -> Result<(u32, Vec<pb::PagemapEntry>), ImageError> {
    let frames = entries(path, PAGEMAP, bytes)?;
    let decode_err = |offset, message, source| ImageError::Decode {
        path: path.to_path_buf(),
        offset,
        message,
        source,
    };
    let Some(((hoff, h), rest)) = frames.split_first() else {
        return Err(ImageError::Invalid {
            path: path.to_path_buf(),
            what: "no pagemap_head entry".into(),
        });
    };
    let head = pb::PagemapHead::decode(*h).map_err(|e| decode_err(*hoff, "pagemap_head", e))?;
    let mut out = Vec::with_capacity(rest.len());
    for (off, p) in rest {
        out.push(pb::PagemapEntry::decode(*p).map_err(|e| decode_err(*off, "pagemap_entry", e))?);
    }
    Ok((head.pages_id, out))
}

/// The bytes of `path`, or `None` if it does not exist.
fn read_opt_bytes(path: &Path) -> Result<Option<Vec<u8>>, ImageError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ImageError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        }),
    }
}

/// The magic numbers an image of `kind` starts with.
fn head(kind: Kind) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    match kind.head {
        Head::Common(m) => {
            buf.extend_from_slice(&IMG_COMMON_MAGIC.to_ne_bytes());
            buf.extend_from_slice(&m.to_ne_bytes());
        }
        Head::Bare(m) => buf.extend_from_slice(&m.to_ne_bytes()),
        Head::Service(m) => {
            buf.extend_from_slice(&IMG_SERVICE_MAGIC.to_ne_bytes());
            buf.extend_from_slice(&m.to_ne_bytes());
        }
    }
    buf
}

/// Checks the head of `bytes` against `kind` and splits the rest into (offset, payload).
pub fn entries<'a>(
    path: &Path,
    kind: Kind,
    bytes: &'a [u8],
) -> Result<Vec<(usize, &'a [u8])>, ImageError> {
    Ok(entries_with_data(path, kind, bytes)?
        .into_iter()
        .map(|(off, payload, _)| (off, payload))
        .collect())
}

/// One framed entry: (offset, payload, raw data after it).
pub type Framed<'a> = (usize, &'a [u8], &'a [u8]);

/// Like [`entries`], also giving the raw bytes that follow each entry (pipe and socket queue
/// data; empty for other kinds): (offset, payload, data).
pub fn entries_with_data<'a>(
    path: &Path,
    kind: Kind,
    bytes: &'a [u8],
) -> Result<Vec<Framed<'a>>, ImageError> {
    let u32_at = |off: usize, what| -> Result<u32, ImageError> {
        bytes
            .get(off..off + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            .ok_or(ImageError::Truncated {
                path: path.to_path_buf(),
                offset: off,
                what,
            })
    };
    let bad = |found, want| ImageError::BadMagic {
        path: path.to_path_buf(),
        expected: kind.name,
        found,
        want,
    };
    let mut off = match kind.head {
        Head::Common(m) | Head::Service(m) => {
            let head = if matches!(kind.head, Head::Common(_)) {
                IMG_COMMON_MAGIC
            } else {
                IMG_SERVICE_MAGIC
            };
            let h = u32_at(0, "image head")?;
            if h != head {
                return Err(bad(h, head));
            }
            let t = u32_at(4, "image type")?;
            if t != m {
                return Err(bad(t, m));
            }
            8
        }
        Head::Bare(m) => {
            let t = u32_at(0, "image type")?;
            if t != m {
                return Err(bad(t, m));
            }
            4
        }
    };
    let mut out = Vec::new();
    while off < bytes.len() {
        let len = u32_at(off, "entry size")? as usize;
        if len > MAX_ENTRY {
            return Err(ImageError::Invalid {
                path: path.to_path_buf(),
                what: format!("entry at byte {off} claims {len} bytes (limit {MAX_ENTRY})"),
            });
        }
        let start = off + 4;
        let payload = bytes.get(start..start + len).ok_or(ImageError::Truncated {
            path: path.to_path_buf(),
            offset: start,
            what: "entry payload",
        })?;
        let data_len = extra_len(kind, out.is_empty(), payload, &bytes[start + len..]);
        // A hostile size can be anything up to u64::MAX: no overflow, just truncated.
        let data = data_len
            .and_then(|n| (start + len).checked_add(n))
            .and_then(|end| bytes.get(start + len..end))
            .ok_or(ImageError::Truncated {
                path: path.to_path_buf(),
                offset: start + len,
                what: "queued data after the entry",
            })?;
        out.push((off, payload, data));
        off = start + len + data.len();
    }
    Ok(out)
}

/// Raw bytes that follow an entry of some kinds (pipe, socket and TCP queue data, SysV IPC
/// contents, ghost file contents); `first`: the entry is the image's first; `rest` is what
/// follows the entry in the file.
/// None when the size an entry gives cannot be a size (a damaged image).
fn extra_len(kind: Kind, first: bool, payload: &[u8], rest: &[u8]) -> Option<usize> {
    let field = if kind.name == IPCNS_SHM.name {
        // The segment's bytes, padded to 4, unless CRIU put them in a shmem pagemap.
        pb::IpcShmEntry::decode(payload).map(|e| {
            if e.in_pagemaps == Some(true) {
                Some(0)
            } else {
                usize_of(e.size).checked_next_multiple_of(4)
            }
        })
    } else if kind.name == IPCNS_SEM.name {
        pb::IpcSemEntry::decode(payload).map(|e| Some(sem_values_len(e.nsems as usize)))
    } else if kind.name == IPCNS_MSG.name {
        pb::IpcMsgEntry::decode(payload).map(|e| {
            Some(
                split_ipc_msgs(rest, e.qnum as usize)
                    .map(|(_, used)| used)
                    .unwrap_or(rest.len() + 1),
            )
        })
    } else if kind.name == PIPES_DATA.name || kind.name == FIFO_DATA.name {
        pb::PipeDataEntry::decode(payload).map(|e| Some(e.bytes as usize))
    } else if kind.name == SK_QUEUES.name {
        pb::SkPacketEntry::decode(payload).map(|e| Some(e.length as usize))
    } else if kind.name == TCP_STREAM.name {
        // The receive queue's bytes, then the send queue's (as CRIU writes them).
        pb::TcpStreamEntry::decode(payload)
            .map(|e| (e.inq_len as usize).checked_add(e.outq_len as usize))
    } else if kind.name == GHOST_FILE.name && !first {
        // A sparse ghost: every entry after the first is a chunk, followed by its bytes.
        pb::GhostChunkEntry::decode(payload).map(|c| Some(usize_of(c.len)))
    } else if kind.name == GHOST_FILE.name {
        pb::GhostFileEntry::decode(payload).map(|e| {
            if e.chunks == Some(true) {
                Some(0)
            } else {
                Some(usize_of(e.size.unwrap_or(0)))
            }
        })
    } else {
        return Some(0);
    };
    field.unwrap_or(Some(0))
}

/// The u32 that frames an encoded entry. Protobuf messages are under 2 GiB (the format's own
/// limit), which a u32 holds.
#[allow(clippy::cast_possible_truncation)] // below 2 GiB, see above
fn frame_len(len: usize) -> [u8; 4] {
    (len as u32).to_ne_bytes()
}

/// Bytes the values of a semaphore set take in `ipcns-sem`: one u16 each, padded to 8.
pub fn sem_values_len(nsems: usize) -> usize {
    (2 * nsems).next_multiple_of(8)
}

/// The data after an `ipc_msg_entry` in `ipcns-msg`: for each of its `qnum` messages, a
/// framed `ipc_msg` (u32 size + message) then the body, padded to 8 bytes.
pub fn ipc_msgs_data(msgs: &[(pb::IpcMsg, Vec<u8>)]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (m, body) in msgs {
        buf.extend_from_slice(&frame_len(m.encoded_len()));
        m.encode(&mut buf).expect("Vec grows");
        buf.extend_from_slice(body);
        buf.resize(buf.len() + body.len().next_multiple_of(8) - body.len(), 0);
    }
    buf
}

/// Splits the data after an `ipc_msg_entry` into its `qnum` messages (header and body);
/// also returns the bytes used. `None` if it is truncated or malformed.
#[allow(clippy::type_complexity)]
fn split_ipc_msgs(data: &[u8], qnum: usize) -> Option<(Vec<(pb::IpcMsg, &[u8])>, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    for _ in 0..qnum {
        let len = u32::from_ne_bytes(data.get(off..off + 4)?.try_into().ok()?) as usize;
        let m = pb::IpcMsg::decode(data.get(off + 4..off + 4 + len)?).ok()?;
        off += 4 + len;
        let body = data.get(off..off + m.msize as usize)?;
        off += (m.msize as usize).next_multiple_of(8);
        if off > data.len() {
            return None;
        }
        out.push((m, body));
    }
    Some((out, off))
}

/// The messages of one queue of `ipcns-msg` image `path`, from the data after its entry.
pub fn read_ipc_msgs(
    path: &Path,
    data: &[u8],
    qnum: usize,
) -> Result<Vec<(pb::IpcMsg, Vec<u8>)>, ImageError> {
    let (msgs, _) = split_ipc_msgs(data, qnum).ok_or_else(|| ImageError::Invalid {
        path: path.to_path_buf(),
        what: format!("a message queue's {qnum} messages are truncated or malformed"),
    })?;
    Ok(msgs.into_iter().map(|(m, b)| (m, b.to_vec())).collect())
}

/// Finds the image kind a file name belongs to (`core-42.img` → CORE).
pub fn kind_of(file_name: &str) -> Option<Kind> {
    let stem = file_name.strip_suffix(".img").unwrap_or(file_name);
    ALL.iter()
        .filter(|k| {
            stem == k.name
                || stem
                    .strip_prefix(k.name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .max_by_key(|k| k.name.len())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_kinds() {
        assert_eq!(kind_of("core-42.img").unwrap().name, "core");
        assert_eq!(kind_of("pagemap-42.img").unwrap().name, "pagemap");
        assert_eq!(kind_of("pipes-data.img").unwrap().name, "pipes-data");
        assert_eq!(kind_of("stats-dump").unwrap().name, "stats");
        assert_eq!(kind_of("inventory.img").unwrap().name, "inventory");
        assert!(kind_of("pages-1.img").is_none());
    }

    #[test]
    fn framing_round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("cryo-img-test-{}", std::process::id()));
        let d = ImageDir::create(&dir).unwrap();
        let e = pb::PstreeEntry {
            pid: 7,
            ppid: 0,
            pgid: 7,
            sid: 7,
            threads: vec![7],
            ..Default::default()
        };
        d.write("pstree.img", PSTREE, &[e.clone(), e.clone()])
            .unwrap();
        let back: Vec<pb::PstreeEntry> = d.read("pstree.img", PSTREE).unwrap();
        assert_eq!(back, vec![e.clone(), e]);
        let bytes = std::fs::read(d.file("pstree.img")).unwrap();
        std::fs::write(d.file("pstree.img"), &bytes[..bytes.len() - 3]).unwrap();
        let err = d.read::<pb::PstreeEntry>("pstree.img", PSTREE).unwrap_err();
        assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
        assert!(d.read::<pb::PstreeEntry>("pstree.img", CORE).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Sizes from the image near usize::MAX (found by cryo-fuzz; replayed from
    /// integration/fixtures/fuzz-regressions by fuzz/tests/regressions.rs): errors, no
    /// overflow.
    #[test]
    fn hostile_sizes_after_entries_are_truncation() {
        let path = Path::new("x.img");
        let ghost = pb::GhostFileEntry {
            size: Some(u64::MAX - 2),
            ..Default::default()
        };
        let shm = pb::IpcShmEntry {
            size: u64::MAX - 1,
            ..Default::default()
        };
        let frame = |kind: Kind, m: &dyn Fn(&mut Vec<u8>)| {
            let mut b = head(kind);
            let mut p = Vec::new();
            m(&mut p);
            b.extend_from_slice(&crate::num::len32(p.len()).to_ne_bytes());
            b.extend_from_slice(&p);
            b.extend_from_slice(b"data");
            b
        };
        let g = frame(GHOST_FILE, &|p| ghost.encode(p).unwrap());
        let s = frame(IPCNS_SHM, &|p| shm.encode(p).unwrap());
        for (kind, bytes) in [(GHOST_FILE, g), (IPCNS_SHM, s)] {
            let err = entries_with_data(path, kind, &bytes).unwrap_err();
            assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
        }
        let mut data = Vec::new();
        let m = pb::IpcMsg {
            mtype: 1,
            msize: u32::MAX,
        };
        data.extend_from_slice(&crate::num::len32(m.encoded_len()).to_ne_bytes());
        m.encode(&mut data).unwrap();
        data.extend_from_slice(b"body");
        assert!(read_ipc_msgs(path, &data, 1).is_err());
    }

    #[test]
    fn ipc_msg_queues_frame_their_messages() {
        let dir = std::env::temp_dir().join(format!("cryo-img-ipc-{}", std::process::id()));
        let d = ImageDir::create(&dir).unwrap();
        let msgs = vec![
            (pb::IpcMsg { mtype: 3, msize: 5 }, b"hello".to_vec()),
            (pb::IpcMsg { mtype: 1, msize: 0 }, Vec::new()),
            (pb::IpcMsg { mtype: 9, msize: 8 }, b"12345678".to_vec()),
        ];
        let q = |id, qnum| pb::IpcMsgEntry {
            desc: pb::IpcDescEntry {
                id,
                ..Default::default()
            },
            qbytes: 100,
            qnum,
        };
        let entries = vec![(q(1, 3), ipc_msgs_data(&msgs)), (q(2, 0), Vec::new())];
        d.write_with_data("ipcns-msg-1.img", IPCNS_MSG, &entries)
            .unwrap();
        let back = d
            .read_with_data::<pb::IpcMsgEntry>("ipcns-msg-1.img", IPCNS_MSG)
            .unwrap();
        assert_eq!(back.len(), 2);
        let path = d.file("ipcns-msg-1.img");
        assert_eq!(read_ipc_msgs(&path, &back[0].1, 3).unwrap(), msgs);
        assert_eq!(back[1].0.desc.id, 2);
        // Bodies are padded to 8: 5 -> 8, 0 -> 0, 8 -> 8.
        assert_eq!(back[0].1.len(), 3 * 4 + 3 * 4 + 8 + 8);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 12]).unwrap();
        assert!(d
            .read_with_data::<pb::IpcMsgEntry>("ipcns-msg-1.img", IPCNS_MSG)
            .is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
