//! `cryo show FILE`: decodes any CRIU image (written by cryo or CRIU) to JSON, like `crit show`.
//! Decoding is generic: the message type comes from the file's magic number, the field names
//! from the embedded descriptors of proto/.

use std::path::Path;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Value};

use crate::image::{self, pb, ImageError, Kind};

/// Identifies the kind of an image file from its magic numbers (or, failing that, its name).
fn detect(path: &Path, bytes: &[u8]) -> Result<Kind, ImageError> {
    let word = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4")))
    };
    let (w0, w1) = (word(0), word(4));
    for k in image::ALL {
        let hit = match k.head {
            image::Head::Common(m) => w0 == Some(image::IMG_COMMON_MAGIC) && w1 == Some(m),
            image::Head::Service(m) => w0 == Some(image::IMG_SERVICE_MAGIC) && w1 == Some(m),
            image::Head::Bare(m) => w0 == Some(m),
        };
        if hit {
            return Ok(*k);
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("pages-") || name.ends_with(".tar.gz") || name.ends_with(".tar.gz.img") {
        return Err(ImageError::Invalid {
            path: path.to_path_buf(),
            what: "raw data image (no entries to decode)".into(),
        });
    }
    Err(ImageError::Invalid {
        path: path.to_path_buf(),
        what: format!(
            "unknown image magic {:#010x} {:#010x}",
            w0.unwrap_or(0),
            w1.unwrap_or(0)
        ),
    })
}

/// Decodes `path` into `{"magic": NAME, "entries": [...]}`.
pub fn show(path: &Path) -> Result<Value, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })?;
    if bytes.starts_with(&0x184D_2A5Cu32.to_le_bytes()) {
        return show_compressed_pages(path, &bytes);
    }
    let kind = detect(path, &bytes)?;
    // Decoded once: the embedded set is large (every message, with source info).
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        DescriptorPool::decode(pb::DESCRIPTORS).expect("embedded descriptors are valid")
    });
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(true);
    let mut entries = Vec::new();
    for (i, (off, payload)) in image::entries(path, kind, &bytes)?.into_iter().enumerate() {
        let name = if kind.name == image::PAGEMAP.name && i == 0 {
            "pagemap_head"
        } else {
            kind.message
        };
        let desc = pool
            .get_message_by_name(name)
            .expect("message of a known kind");
        let msg = DynamicMessage::decode(desc, payload).map_err(|source| ImageError::Decode {
            path: path.to_path_buf(),
            offset: off,
            message: kind.message,
            source,
        })?;
        let v = msg
            .serialize_with_options(serde_json::value::Serializer, &opts)
            .map_err(|e| ImageError::Invalid {
                path: path.to_path_buf(),
                what: format!("cannot render entry at byte {off}: {e}"),
            })?;
        entries.push(v);
    }
    Ok(json!({ "magic": kind.name.to_uppercase().replace('-', "_"), "entries": entries }))
}

/// A compressed pages image (`dump --compress`): its head and one entry per block (where
/// its data lies in the raw `pages-N.img`, how large it is compressed, its digest).
fn show_compressed_pages(path: &Path, bytes: &[u8]) -> Result<Value, ImageError> {
    let (h, blocks) = image::pages::index(path, bytes)?;
    let entries: Vec<Value> = blocks
        .iter()
        .enumerate()
        .map(|(i, &(_, len, digest))| {
            let at = i as u64 * h.block as u64;
            json!({
                "raw_offset": at,
                "raw_size": (h.size - at).min(h.block as u64),
                "compressed_size": len,
                "xxh3_128": format!("{digest:032x}"),
            })
        })
        .collect();
    Ok(json!({
        "magic": "PAGES_ZST",
        "codec": "zstd",
        "block_size": h.block,
        "size": h.size,
        "compressed_size": bytes.len(),
        "entries": entries,
    }))
}
