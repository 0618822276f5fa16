//! Where a checkpoint's files come from: an images directory, a podman checkpoint directory,
//! an OCI image layout directory, or an archive (tar, plain or compressed with gzip or zstd,
//! told by its first bytes, not by its name), read in place without unpacking to disk.
//!
//! Every file is a [`Member`] with a logical name relative to the source (`inventory.img`,
//! `checkpoint/pages-1.img`, `spec.dump`, `blobs/sha256/HEX`). An uncompressed archive is
//! indexed once (`tar`'s seeking iterator skips file data) and members are then read with
//! `pread` at their offsets, also inside a nested tar (containerd's checkpoint blob inside an
//! exported OCI archive). A compressed archive is decompressed once to index it, keeping small
//! members in memory; a large member (a pages image) is found again by decompressing the
//! archive up to it when it is needed, one pass for everything a command asks for at once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::InspectError;

/// Members up to this size are kept in memory when a compressed archive is indexed.
const KEEP_MEMBER: u64 = 8 << 20;
/// At most this much is kept in memory in all.
const KEEP_TOTAL: u64 = 512 << 20;
/// How many names a tar summary lists.
const SUMMARY_NAMES: usize = 200;

/// How an archive's bytes are compressed (from its magic number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

impl Codec {
    /// The codec whose magic starts `head`.
    pub fn sniff(head: &[u8]) -> Codec {
        if head.starts_with(&[0x1f, 0x8b]) {
            Codec::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else {
            Codec::None
        }
    }

    /// Wraps `r` in the matching decoder.
    fn reader<'a>(self, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::None => Box::new(r),
            Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

/// Looks at the first bytes of `r` and decompresses it if they are a gzip or zstd magic.
pub fn decompressed<'a, R: Read + 'a>(r: R) -> io::Result<(Codec, Box<dyn Read + 'a>)> {
    let mut b = BufReader::new(r);
    let codec = Codec::sniff(b.fill_buf()?);
    Ok((codec, codec.reader(b)?))
}

/// Where a member's bytes are.
#[derive(Debug, Clone)]
enum Loc {
    /// A file of a directory.
    File(PathBuf),
    /// Uncompressed, at this offset of the archive file.
    Raw(u64),
    /// Read while indexing.
    Kept(Arc<Vec<u8>>),
    /// In a compressed archive: found again by name (the member of the outer tar, and the
    /// member of the tar inside it when there is one).
    Streamed {
        outer: String,
        inner: Option<String>,
    },
}

/// One file of a source.
#[derive(Debug, Clone)]
pub struct Member {
    /// Logical name (relative, `/`-separated, no leading `./`).
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: Option<u64>,
    loc: Loc,
}

/// What a tar holds (a container's rootfs diff, the /dev/shm content, a layer).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TarSummary {
    /// Compression of the tar itself.
    pub compression: Option<Codec>,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Paths the layer deletes (`.wh.NAME` whiteouts), without the prefix.
    pub deleted: Vec<String>,
    /// The first entries: path, size, type (`f` file, `d` directory, `l` link, `o` other).
    pub names: Vec<(String, u64, char)>,
    /// More entries than `names` lists.
    pub truncated: bool,
}

/// Reads a (possibly compressed) tar from `r` and counts what it holds.
pub fn summarize_tar(r: &mut dyn Read) -> io::Result<TarSummary> {
    let (codec, r) = decompressed(r)?;
    let mut s = TarSummary {
        compression: Some(codec),
        ..TarSummary::default()
    };
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let e = e?;
        let name = clean_name(&e.path()?.to_string_lossy());
        let t = e.header().entry_type();
        let kind = if t.is_file() {
            s.files += 1;
            s.bytes += e.size();
            'f'
        } else if t.is_dir() {
            s.dirs += 1;
            'd'
        } else if t.is_symlink() || t.is_hard_link() {
            'l'
        } else {
            'o'
        };
        s.entries += 1;
        let base = name.rsplit('/').next().unwrap_or("");
        if let Some(gone) = base.strip_prefix(".wh.").filter(|g| !g.starts_with(".wh.")) {
            let dir = &name[..name.len() - base.len()];
            s.deleted.push(format!("/{dir}{gone}"));
        }
        if s.names.len() < SUMMARY_NAMES {
            s.names.push((name, e.size(), kind));
        } else {
            s.truncated = true;
        }
    }
    Ok(s)
}

/// `./a/b` → `a/b`; `/a/` → `a`.
fn clean_name(n: &str) -> String {
    let mut n = n;
    loop {
        if let Some(r) = n.strip_prefix("./") {
            n = r;
        } else if let Some(r) = n.strip_prefix('/') {
            n = r;
        } else {
            break;
        }
    }
    n.trim_end_matches('/').to_string()
}

/// A byte range of a file, readable and seekable on its own (a member of an uncompressed
/// archive, e.g. the tar inside containerd's export).
struct Window<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// What kind of thing was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Container {
    /// A directory or tar of images only.
    None,
    /// podman's checkpoint: `checkpoint/` plus config.dump, spec.dump, ...
    Podman,
    /// containerd's checkpoint: an OCI index whose layers include the images as a tar.
    Containerd,
}

/// An opened checkpoint source.
pub struct Source {
    /// What the user gave.
    pub path: PathBuf,
    /// The archive file, if it is one.
    archive: Option<File>,
    pub compression: Option<Codec>,
    pub container: Container,
    /// Every member, by logical name.
    members: BTreeMap<String, Member>,
    /// Members holding the images are `images_prefix + NAME`.
    images_prefix: String,
    /// Tar summaries made while indexing (members streamed past).
    summaries: HashMap<String, TarSummary>,
    /// containerd: the OCI index that lists the checkpoint's parts.
    pub oci_index: Option<serde_json::Value>,
    /// Members of a compressed archive up to this size are kept in memory.
    keep: u64,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> InspectError + 'a {
    move |source| InspectError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The media type of the images tar in containerd's checkpoint index.
pub const CONTAINERD_CRIU: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";

impl Source {
    /// Opens `path`: a directory (images, podman checkpoint, OCI layout) or an archive.
    pub fn open(path: &Path) -> Result<Source, InspectError> {
        Self::open_keeping(path, KEEP_MEMBER)
    }

    /// Like [`Source::open`], keeping members of a compressed archive up to `keep` bytes in
    /// memory (the rest is read again from the archive when needed).
    pub fn open_keeping(path: &Path, keep: u64) -> Result<Source, InspectError> {
        let meta = std::fs::metadata(path).map_err(io_err(path, "stat"))?;
        let mut src = Source {
            path: path.to_path_buf(),
            archive: None,
            compression: None,
            container: Container::None,
            members: BTreeMap::new(),
            images_prefix: String::new(),
            summaries: HashMap::new(),
            oci_index: None,
            keep,
        };
        if meta.is_dir() {
            src.index_dir(path, "", 0)?;
        } else {
            src.index_archive()?;
        }
        src.settle()?;
        Ok(src)
    }

    /// Lists a directory (and its subdirectories, a few levels) as members.
    fn index_dir(&mut self, dir: &Path, prefix: &str, depth: u32) -> Result<(), InspectError> {
        let rd = std::fs::read_dir(dir).map_err(io_err(dir, "read directory"))?;
        for e in rd {
            let e = e.map_err(io_err(dir, "read directory"))?;
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let p = e.path();
            // Follows symlinks (a `parent` link is handled by the memory reader).
            let Ok(m) = std::fs::metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                // Only where checkpoints keep files: podman's checkpoint/, an OCI layout's
                // blobs/ALG/ (a `parent` link is followed by the memory reader instead).
                let wanted = (depth == 0 && (name == "checkpoint" || name == "blobs"))
                    || (depth == 1 && prefix == "blobs/");
                if wanted {
                    self.index_dir(&p, &format!("{name}/"), depth + 1)?;
                }
                continue;
            }
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            self.members.insert(
                name.clone(),
                Member {
                    name,
                    size: m.len(),
                    mtime,
                    loc: Loc::File(p),
                },
            );
        }
        Ok(())
    }

    /// Indexes an archive file (one pass).
    fn index_archive(&mut self) -> Result<(), InspectError> {
        let path = self.path.clone();
        let f = File::open(&path).map_err(io_err(&path, "open"))?;
        let mut head = [0u8; 512];
        let n = f.read_at(&mut head, 0).map_err(io_err(&path, "read"))?;
        let codec = Codec::sniff(&head[..n]);
        self.compression = Some(codec);
        if codec == Codec::None && !is_tar_header(&head[..n]) {
            return Err(InspectError::NotACheckpoint {
                path,
                what: "neither a directory nor a tar archive (plain, gzip or zstd)".into(),
            });
        }
        let bad = |e: io::Error| InspectError::Archive {
            path: path.clone(),
            what: format!("cannot read it as a tar archive: {e}"),
        };
        if codec == Codec::None {
            let mut ar = tar::Archive::new(&f);
            for e in ar.entries_with_seek().map_err(bad)? {
                let e = e.map_err(bad)?;
                if let Some(m) = raw_member(&e, 0, None) {
                    self.members.insert(m.name.clone(), m);
                }
            }
        } else {
            let mut kept = 0u64;
            let r = codec.reader(BufReader::new(&f)).map_err(bad)?;
            let mut ar = tar::Archive::new(r);
            for e in ar.entries().map_err(bad)? {
                let mut e = e.map_err(bad)?;
                if !e.header().entry_type().is_file() {
                    continue;
                }
                let name = clean_name(&e.path().map_err(bad)?.to_string_lossy());
                let size = e.size();
                let loc = if size <= self.keep && kept + size <= KEEP_TOTAL {
                    let mut buf = Vec::with_capacity(size as usize);
                    e.read_to_end(&mut buf).map_err(bad)?;
                    kept += size;
                    Loc::Kept(Arc::new(buf))
                } else {
                    if name.ends_with(".tar") {
                        // Counted on the way past, so it needs no second pass.
                        if let Ok(s) = summarize_tar(&mut e) {
                            self.summaries.insert(name.clone(), s);
                        }
                    }
                    Loc::Streamed {
                        outer: name.clone(),
                        inner: None,
                    }
                };
                self.members.insert(
                    name.clone(),
                    Member {
                        name,
                        size,
                        mtime: e.header().mtime().ok(),
                        loc,
                    },
                );
            }
        }
        self.archive = Some(f);
        Ok(())
    }

    /// Finds where the images are and what kind of checkpoint this is.
    fn settle(&mut self) -> Result<(), InspectError> {
        if self.members.contains_key("inventory.img") {
            self.container = if self.members.contains_key("spec.dump") {
                Container::Podman
            } else {
                Container::None
            };
            return Ok(());
        }
        if self.members.contains_key("checkpoint/inventory.img") {
            self.images_prefix = "checkpoint/".into();
            self.container = Container::Podman;
            return Ok(());
        }
        if self.members.contains_key("index.json") {
            return self.settle_oci();
        }
        let what = if self.members.keys().any(|k| k.starts_with("checkpoint/")) {
            "it has a checkpoint/ directory but no checkpoint/inventory.img (an incomplete podman export?)".to_string()
        } else {
            "no inventory.img, checkpoint/inventory.img or OCI index.json in it".to_string()
        };
        Err(InspectError::NotACheckpoint {
            path: self.path.clone(),
            what,
        })
    }

    /// containerd: index.json → (index →) the criu tar blob, whose members become
    /// `checkpoint/NAME`.
    fn settle_oci(&mut self) -> Result<(), InspectError> {
        let path = self.path.clone();
        let not = |what: String| InspectError::NotACheckpoint {
            path: path.clone(),
            what,
        };
        let index = self.json("index.json")?;
        let mut found = None;
        let mut seen = Vec::new();
        // The top index names the checkpoint's own index; look one level down too.
        let mut queue = vec![index.clone()];
        let mut depth = 0;
        while let Some(ix) = queue.pop() {
            for d in ix["manifests"].as_array().into_iter().flatten() {
                let media = d["mediaType"].as_str().unwrap_or("");
                let digest = d["digest"].as_str().unwrap_or("");
                seen.push(media.to_string());
                if media == CONTAINERD_CRIU {
                    found = Some((digest.to_string(), ix.clone()));
                } else if media.ends_with("image.index.v1+json") && depth < 4 {
                    if let Ok(sub) = self.json(&blob_name(digest)) {
                        queue.push(sub);
                    }
                }
            }
            depth += 1;
        }
        let Some((digest, ck_index)) = found else {
            return Err(not(format!(
                "an OCI image without a checkpoint layer ({CONTAINERD_CRIU}); it lists: {}",
                if seen.is_empty() {
                    "nothing".to_string()
                } else {
                    seen.join(", ")
                }
            )));
        };
        let blob = blob_name(&digest);
        let Some(outer) = self.members.get(&blob).cloned() else {
            return Err(not(format!(
                "the checkpoint layer {digest} is not in the archive (export it with `ctr images export --skip-manifest-json`)"
            )));
        };
        self.index_inner(&outer)?;
        self.images_prefix = "checkpoint/".into();
        self.container = Container::Containerd;
        self.oci_index = Some(ck_index);
        if !self.members.contains_key("checkpoint/inventory.img") {
            return Err(not(format!(
                "the checkpoint layer {digest} holds no inventory.img"
            )));
        }
        Ok(())
    }

    /// Indexes the tar held in member `outer` as `checkpoint/NAME` members.
    fn index_inner(&mut self, outer: &Member) -> Result<(), InspectError> {
        let path = self.path.clone();
        let bad = |e: io::Error| InspectError::Archive {
            path: path.clone(),
            what: format!("{}: cannot read it as a tar: {e}", outer.name),
        };
        let mut found = Vec::new();
        match &outer.loc {
            Loc::Raw(off) => {
                let f = self.archive.as_ref().expect("raw member of an archive");
                let mut w = Window {
                    file: f,
                    start: *off,
                    len: outer.size,
                    pos: 0,
                };
                let mut head = [0u8; 4];
                let n = w.read(&mut head).map_err(bad)?;
                w.pos = 0;
                if Codec::sniff(&head[..n]) == Codec::None {
                    let mut ar = tar::Archive::new(w);
                    for e in ar.entries_with_seek().map_err(bad)? {
                        let e = e.map_err(bad)?;
                        if let Some(m) = raw_member(&e, *off, Some("checkpoint/")) {
                            found.push(m);
                        }
                    }
                } else {
                    self.stream_inner(outer, &mut w, &mut found).map_err(bad)?;
                }
            }
            Loc::File(p) => {
                // An OCI layout directory: the blob is a tar file of its own, read in place.
                let f = File::open(p).map_err(io_err(p, "open"))?;
                let mut head = [0u8; 4];
                let n = f.read_at(&mut head, 0).map_err(io_err(p, "read"))?;
                if Codec::sniff(&head[..n]) == Codec::None {
                    let mut ar = tar::Archive::new(&f);
                    for e in ar.entries_with_seek().map_err(bad)? {
                        let e = e.map_err(bad)?;
                        if let Some(m) = raw_member(&e, 0, Some("checkpoint/")) {
                            found.push(m);
                        }
                    }
                    self.archive = Some(f);
                } else {
                    let mut r = BufReader::new(&f);
                    self.stream_inner(outer, &mut r, &mut found).map_err(bad)?;
                    if found.iter().any(|m| matches!(m.loc, Loc::Streamed { .. })) {
                        return Err(InspectError::Archive {
                            path: p.clone(),
                            what: "a compressed checkpoint layer with members over 8 MiB: decompress it first".into(),
                        });
                    }
                }
            }
            Loc::Kept(bytes) => {
                let mut r: &[u8] = bytes;
                self.stream_inner(outer, &mut r, &mut found).map_err(bad)?;
            }
            Loc::Streamed { .. } => {
                let mut res = Ok(());
                let mut got = Vec::new();
                self.visit(&[outer], |_, r| {
                    res = Self::stream_inner_into(&outer.name, r, &mut got, self.keep);
                    Ok(())
                })?;
                res.map_err(bad)?;
                found = got;
            }
        }
        for m in found {
            self.members.insert(m.name.clone(), m);
        }
        Ok(())
    }

    fn stream_inner(
        &self,
        outer: &Member,
        r: &mut dyn Read,
        found: &mut Vec<Member>,
    ) -> io::Result<()> {
        Self::stream_inner_into(&outer.name, r, found, self.keep)
    }

    /// Reads the (possibly compressed) tar in `r`, keeping small members.
    fn stream_inner_into(
        outer: &str,
        r: &mut dyn Read,
        found: &mut Vec<Member>,
        keep: u64,
    ) -> io::Result<()> {
        let mut kept = 0u64;
        let (_, r) = decompressed(r)?;
        let mut ar = tar::Archive::new(r);
        for e in ar.entries()? {
            let mut e = e?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let inner = clean_name(&e.path()?.to_string_lossy());
            let size = e.size();
            let loc = if size <= keep && kept + size <= KEEP_TOTAL {
                let mut buf = Vec::with_capacity(size as usize);
                e.read_to_end(&mut buf)?;
                kept += size;
                Loc::Kept(Arc::new(buf))
            } else {
                Loc::Streamed {
                    outer: outer.to_string(),
                    inner: Some(inner.clone()),
                }
            };
            found.push(Member {
                name: format!("checkpoint/{inner}"),
                size,
                mtime: e.header().mtime().ok(),
                loc,
            });
        }
        Ok(())
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// The member holding image `name` (`inventory.img`), if present.
    pub fn image(&self, name: &str) -> Option<&Member> {
        self.members.get(&format!("{}{name}", self.images_prefix))
    }

    /// Names of the images (without the prefix), sorted.
    pub fn image_names(&self) -> Vec<String> {
        self.members
            .keys()
            .filter_map(|k| k.strip_prefix(&self.images_prefix))
            .filter(|k| !k.contains('/'))
            .map(String::from)
            .collect()
    }

    /// Every member (runtime files included).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The image directory as a path, for error messages (`ARCHIVE:checkpoint/core-1.img`
    /// inside an archive).
    pub fn display_name(&self, m: &Member) -> PathBuf {
        match &m.loc {
            Loc::File(p) => p.clone(),
            _ => PathBuf::from(format!("{}:{}", self.path.display(), m.name)),
        }
    }

    /// The directory the images are in, when they are plain files (for `parent` links).
    pub fn images_dir(&self) -> Option<PathBuf> {
        if self.archive.is_some() {
            return None;
        }
        Some(self.path.join(self.images_prefix.trim_end_matches('/')))
    }

    /// Parses a member as JSON.
    pub fn json(&self, name: &str) -> Result<serde_json::Value, InspectError> {
        let m = self.member(name).ok_or_else(|| InspectError::Archive {
            path: self.path.clone(),
            what: format!("{name} is missing"),
        })?;
        let bytes = self.bytes(m)?;
        serde_json::from_slice(&bytes).map_err(|e| InspectError::Archive {
            path: self.display_name(m),
            what: format!("not valid JSON: {e}"),
        })
    }

    /// The whole content of a member.
    pub fn bytes(&self, m: &Member) -> Result<Vec<u8>, InspectError> {
        match &m.loc {
            Loc::Kept(b) => Ok(b.as_ref().clone()),
            Loc::File(p) => std::fs::read(p).map_err(io_err(p, "read")),
            _ => self.read_at(m, 0, m.size as usize),
        }
    }

    /// `len` bytes of a member from `off` (fewer at its end).
    pub fn read_at(&self, m: &Member, off: u64, len: usize) -> Result<Vec<u8>, InspectError> {
        let mut out = self.read_many(&[(m, off, len)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Several ranges at once: `(member, offset, length)`; a compressed archive is
    /// decompressed once for all of them.
    pub fn read_many(&self, reqs: &[(&Member, u64, usize)]) -> Result<Vec<Vec<u8>>, InspectError> {
        let mut out = vec![Vec::new(); reqs.len()];
        let mut streamed: Vec<usize> = Vec::new();
        for (i, (m, off, len)) in reqs.iter().enumerate() {
            let len = (*len as u64).min(m.size.saturating_sub(*off)) as usize;
            match &m.loc {
                Loc::Kept(b) => {
                    let start = (*off).min(b.len() as u64) as usize;
                    out[i] = b[start..(start + len).min(b.len())].to_vec()
                }
                Loc::File(p) => {
                    let f = File::open(p).map_err(io_err(p, "open"))?;
                    out[i] = vec![0; len];
                    f.read_exact_at(&mut out[i], *off)
                        .map_err(io_err(p, "read"))?;
                }
                Loc::Raw(at) => {
                    let f = self.archive.as_ref().expect("raw member of an archive");
                    out[i] = vec![0; len];
                    f.read_exact_at(&mut out[i], at + off)
                        .map_err(io_err(&self.path, "read"))?;
                }
                Loc::Streamed { .. } => streamed.push(i),
            }
        }
        if streamed.is_empty() {
            return Ok(out);
        }
        // Group the requests by member, in offset order.
        let mut by_member: Vec<(&Member, Vec<usize>)> = Vec::new();
        for &i in &streamed {
            match by_member.iter_mut().find(|(m, _)| m.name == reqs[i].0.name) {
                Some((_, v)) => v.push(i),
                None => by_member.push((reqs[i].0, vec![i])),
            }
        }
        let members: Vec<&Member> = by_member.iter().map(|(m, _)| *m).collect();
        let path = self.path.clone();
        self.visit(&members, |k, r| {
            let mut idx = by_member[k].1.clone();
            idx.sort_by_key(|&i| reqs[i].1);
            let mut pos = 0u64;
            for i in idx {
                let (m, off, len) = reqs[i];
                let len = (len as u64).min(m.size.saturating_sub(off));
                let read_err = io_err(&path, "read");
                if off < pos {
                    // Overlapping requests: served from what the earlier one read.
                    let src = by_member[k]
                        .1
                        .iter()
                        .find(|&&j| {
                            reqs[j].1 <= off && reqs[j].1 + out[j].len() as u64 >= off + len
                        })
                        .copied();
                    if let Some(j) = src {
                        let s = (off - reqs[j].1) as usize;
                        out[i] = out[j][s..s + len as usize].to_vec();
                    }
                    continue;
                }
                io::copy(&mut (&mut *r).take(off - pos), &mut io::sink()).map_err(read_err)?;
                let mut buf = vec![0; len as usize];
                r.read_exact(&mut buf).map_err(io_err(&path, "read"))?;
                pos = off + len;
                out[i] = buf;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f(i, reader)` for each of `members` (reading it from its start), in archive
    /// order for streamed ones: a compressed archive is decompressed once for all.
    pub fn visit(
        &self,
        members: &[&Member],
        mut f: impl FnMut(usize, &mut dyn Read) -> Result<(), InspectError>,
    ) -> Result<(), InspectError> {
        let mut outer_wanted: HashMap<&str, Vec<(usize, Option<&str>)>> = HashMap::new();
        for (i, m) in members.iter().enumerate() {
            match &m.loc {
                Loc::Kept(b) => f(i, &mut b.as_slice())?,
                Loc::File(p) => {
                    let file = File::open(p).map_err(io_err(p, "open"))?;
                    f(i, &mut BufReader::with_capacity(1 << 20, file))?
                }
                Loc::Raw(at) => {
                    let file = self.archive.as_ref().expect("raw member of an archive");
                    let mut w = Window {
                        file,
                        start: *at,
                        len: m.size,
                        pos: 0,
                    };
                    f(i, &mut BufReader::with_capacity(1 << 20, &mut w))?
                }
                Loc::Streamed { outer, inner } => outer_wanted
                    .entry(outer.as_str())
                    .or_default()
                    .push((i, inner.as_deref())),
            }
        }
        if outer_wanted.is_empty() {
            return Ok(());
        }
        let path = &self.path;
        let bad = |e: io::Error| InspectError::Archive {
            path: path.clone(),
            what: format!("cannot read it again: {e}"),
        };
        let file = self
            .archive
            .as_ref()
            .expect("streamed member of an archive");
        let codec = self.compression.unwrap_or(Codec::None);
        // Positional reads from the start (the fd's own offset is wherever indexing left it).
        let whole = Window {
            file,
            start: 0,
            len: u64::MAX,
            pos: 0,
        };
        let r = codec
            .reader(BufReader::with_capacity(1 << 20, whole))
            .map_err(bad)?;
        let mut ar = tar::Archive::new(r);
        let mut left: usize = outer_wanted.values().map(Vec::len).sum();
        for e in ar.entries().map_err(bad)? {
            if left == 0 {
                break;
            }
            let mut e = e.map_err(bad)?;
            let name = clean_name(&e.path().map_err(bad)?.to_string_lossy());
            let Some(wanted) = outer_wanted.get(name.as_str()) else {
                continue;
            };
            for (i, inner) in wanted.iter().filter(|(_, inner)| inner.is_none()) {
                debug_assert!(inner.is_none());
                f(*i, &mut e)?;
                left -= 1;
            }
            let inners: Vec<(usize, &str)> = wanted
                .iter()
                .filter_map(|(i, n)| n.map(|n| (*i, n)))
                .collect();
            if inners.is_empty() {
                continue;
            }
            let (_, r) = decompressed(&mut e).map_err(bad)?;
            let mut inner_ar = tar::Archive::new(r);
            for ie in inner_ar.entries().map_err(bad)? {
                let mut ie = ie.map_err(bad)?;
                let iname = clean_name(&ie.path().map_err(bad)?.to_string_lossy());
                if let Some((i, _)) = inners.iter().find(|(_, n)| *n == iname) {
                    f(*i, &mut ie)?;
                    left -= 1;
                }
            }
        }
        if left > 0 {
            return Err(InspectError::Archive {
                path: path.clone(),
                what: "a member indexed before is no longer in it (did the file change?)".into(),
            });
        }
        Ok(())
    }

    /// What the tar in member `name` holds.
    pub fn tar_summary(&self, name: &str) -> Result<Option<TarSummary>, InspectError> {
        if let Some(s) = self.summaries.get(name) {
            return Ok(Some(s.clone()));
        }
        let Some(m) = self.member(name) else {
            return Ok(None);
        };
        let mut out = None;
        let shown = self.display_name(m);
        self.visit(&[m], |_, r| {
            out = Some(summarize_tar(r).map_err(|e| InspectError::Archive {
                path: shown.clone(),
                what: format!("not a readable tar: {e}"),
            })?);
            Ok(())
        })?;
        Ok(out)
    }
}

/// `blobs/sha256/HEX` for `sha256:HEX`.
pub fn blob_name(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("blobs/{alg}/{hex}"),
        None => format!("blobs/{digest}"),
    }
}

/// A member of an uncompressed tar read with `entries_with_seek`, at `base` in the file.
fn raw_member<R: Read>(e: &tar::Entry<'_, R>, base: u64, prefix: Option<&str>) -> Option<Member> {
    let t = e.header().entry_type();
    if !t.is_file() {
        return None;
    }
    let name = clean_name(&e.path().ok()?.to_string_lossy());
    let name = format!("{}{name}", prefix.unwrap_or(""));
    Some(Member {
        name,
        size: e.size(),
        mtime: e.header().mtime().ok(),
        loc: Loc::Raw(base + e.raw_file_position()),
    })
}

/// Does `b` look like a tar header (ustar magic, or a valid checksum)?
fn is_tar_header(b: &[u8]) -> bool {
    if b.len() < 512 {
        return false;
    }
    if &b[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&b[148..156])
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok());
    let sum: u32 = b[..512]
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (148..156).contains(&i) {
                32
            } else {
                x as u32
            }
        })
        .sum();
    stored == Some(sum) && b[0] != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, n, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("./a/b"), "a/b");
        assert_eq!(clean_name("/checkpoint/"), "checkpoint");
        assert_eq!(clean_name("././x"), "x");
    }

    #[test]
    fn codecs_are_sniffed() {
        assert_eq!(Codec::sniff(&[0x1f, 0x8b, 8]), Codec::Gzip);
        assert_eq!(Codec::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Codec::Zstd);
        assert_eq!(Codec::sniff(b"inventory"), Codec::None);
        let t = tar_of(&[("a", b"x")]);
        assert!(is_tar_header(&t[..512]));
        assert!(!is_tar_header(&[0u8; 512]));
    }

    #[test]
    fn archives_are_read_in_place_plain_and_compressed() {
        let dir = std::env::temp_dir().join(format!("cryo-src-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big: Vec<u8> = (0..(KEEP_MEMBER + 4096)).map(|i| (i % 251) as u8).collect();
        let t = tar_of(&[
            ("./checkpoint/inventory.img", b"inv"),
            ("checkpoint/pages-1.img", &big),
            ("spec.dump", b"{}"),
        ]);
        let plain = dir.join("a.tar");
        std::fs::write(&plain, &t).unwrap();
        let zst = dir.join("a.tar.gz"); // the name lies: it is zstd
        std::fs::write(&zst, zstd::encode_all(&t[..], 3).unwrap()).unwrap();
        for p in [&plain, &zst] {
            let s = Source::open(p).unwrap();
            assert_eq!(s.container, Container::Podman);
            let inv = s.image("inventory.img").unwrap();
            assert_eq!(s.bytes(inv).unwrap(), b"inv");
            let pages = s.image("pages-1.img").unwrap();
            let (m, off) = (pages, KEEP_MEMBER + 10);
            let got = s.read_many(&[(m, off, 5), (m, 3, 4)]).unwrap();
            assert_eq!(got[0], big[off as usize..off as usize + 5]);
            assert_eq!(got[1], big[3..7]);
        }
        assert_eq!(Source::open(&plain).unwrap().compression, Some(Codec::None));
        assert_eq!(Source::open(&zst).unwrap().compression, Some(Codec::Zstd));
        let junk = dir.join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        let e = Source::open(&junk).err().unwrap();
        assert!(e.to_string().contains("not a checkpoint"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// containerd's shape: an OCI index naming a blob that is a tar of the images; read
    /// in place from a plain archive (offsets inside the inner tar) and from a gzipped one
    /// with nothing kept in memory (every read decompresses the outer tar again).
    #[test]
    fn nested_checkpoint_tar_in_an_oci_archive() {
        let dir = std::env::temp_dir().join(format!("cryo-src-oci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pages: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let inner = tar_of(&[("inventory.img", b"inv"), ("./pages-1.img", &pages)]);
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{CONTAINERD_CRIU}","digest":"sha256:abc","size":{}}}],"annotations":{{"org.opencontainers.image.ref.name":"img"}}}}"#,
            inner.len()
        );
        let outer = tar_of(&[
            ("oci-layout", b"{}"),
            ("blobs/sha256/abc", &inner),
            ("index.json", index.as_bytes()),
        ]);
        let plain = dir.join("oci.tar");
        std::fs::write(&plain, &outer).unwrap();
        let gz = dir.join("oci.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &outer).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        for (p, keep) in [(&plain, KEEP_MEMBER), (&gz, 16), (&gz, KEEP_MEMBER)] {
            let s = Source::open_keeping(p, keep).unwrap();
            assert_eq!(s.container, Container::Containerd);
            assert_eq!(
                s.oci_index.as_ref().unwrap()["annotations"]["org.opencontainers.image.ref.name"],
                "img"
            );
            assert_eq!(s.bytes(s.image("inventory.img").unwrap()).unwrap(), b"inv");
            let m = s.image("pages-1.img").unwrap();
            assert_eq!(m.size, pages.len() as u64);
            let got = s
                .read_many(&[(m, 65_000, 100), (m, 1, 3), (m, 69_990, 50)])
                .unwrap();
            assert_eq!(got[0], pages[65_000..65_100]);
            assert_eq!(got[1], pages[1..4]);
            assert_eq!(got[2], pages[69_990..]);
            let mut all = Vec::new();
            s.visit(&[m], |_, r| {
                r.read_to_end(&mut all).unwrap();
                Ok(())
            })
            .unwrap();
            assert_eq!(all, pages);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn whiteouts_are_deleted_files() {
        let t = tar_of(&[("etc/.wh.passwd", b""), ("tmp/new", b"hello")]);
        let s = summarize_tar(&mut &t[..]).unwrap();
        assert_eq!(s.files, 2);
        assert_eq!(s.bytes, 5);
        assert_eq!(s.deleted, ["/etc/passwd"]);
    }
}
