//! Structure-aware mutations of CRIU images: they know the framing (head magic, `u32` size,
//! protobuf payload, raw data after some entries) and the protobuf wire format (tags,
//! varints, length-delimited fields and the messages nested in them), so most mutants get
//! past the framing and reach the decoders and the code that trusts decoded values.

use std::path::Path;

use cryo::image;
use fastrand::Rng;

/// Varints that break arithmetic: zero, page and size boundaries, sign and width edges.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    63,
    64,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4095,
    4096,
    4097,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x400_0000,
    0x400_0001,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_f000,
    0x8000_0000_0000,
    0xffff_ffff_ffff_f000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// Strings a hostile image would put in a path, name or key field.
const HOSTILE: &[&[u8]] = &[
    b"",
    b"/",
    b".",
    b"..",
    b"/..",
    b"/../../../../etc",
    b"../../x",
    b"/proc/self/cwd",
    b"/proc/self/root/etc",
    b"/proc/1/root/tmp",
    b"/abs/etc",
    b"/up/x",
    b"/magic/x",
    b"/out/x",
    b"/a/b/../../../..",
    b"a\0b",
    b"/dev/ptmx",
    b"pipe:[1]",
    b"\xff\xfe\xfd",
    b"%s%n%x",
    b"/tmp/",
    b"//",
    b"/proc",
    b"cgroup",
    b"name=systemd",
];

/// The frames of an image: (head bytes, [(payload, data after it)]), if it parses.
type Frames = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

fn split(name: &str, bytes: &[u8]) -> Option<Frames> {
    let kind = image::kind_of(name)?;
    // The framing code is under test too: a panic in it here is found again when the
    // input runs; the mutator just falls back to bytes.
    let framed =
        std::panic::catch_unwind(|| image::entries_with_data(Path::new(name), kind, bytes))
            .ok()?
            .ok()?;
    let head_len = framed.first().map_or(bytes.len(), |(off, _, _)| *off);
    let head = bytes.get(..head_len)?.to_vec();
    Some((
        head,
        framed
            .into_iter()
            .map(|(_, p, d)| (p.to_vec(), d.to_vec()))
            .collect(),
    ))
}

fn join(head: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = head.to_vec();
    for (p, d) in entries {
        out.extend_from_slice(&(p.len() as u32).to_ne_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(d);
    }
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One protobuf field: number, wire type, the bytes of the whole field and of its value.
struct Field {
    num: u64,
    wt: u8,
    start: usize,
    vstart: usize,
    end: usize,
}

fn fields(b: &[u8]) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let tag = read_varint(b, &mut at)?;
        let (num, wt) = (tag >> 3, (tag & 7) as u8);
        if num == 0 {
            return None;
        }
        let vstart;
        match wt {
            0 => {
                vstart = at;
                read_varint(b, &mut at)?;
            }
            1 => {
                vstart = at;
                at += 8;
            }
            2 => {
                let len = read_varint(b, &mut at)? as usize;
                vstart = at;
                at = at.checked_add(len)?;
            }
            5 => {
                vstart = at;
                at += 4;
            }
            _ => return None,
        }
        if at > b.len() {
            return None;
        }
        out.push(Field {
            num,
            wt,
            start,
            vstart,
            end: at,
        });
    }
    Some(out)
}

fn interesting(rng: &mut Rng, old: u64) -> u64 {
    match rng.u8(..6) {
        0 => old.wrapping_add(1),
        1 => old.wrapping_sub(1),
        2 => old.wrapping_mul(2).wrapping_add(rng.u64(..4096)),
        3 => rng.u64(..),
        _ => INTERESTING[rng.usize(..INTERESTING.len())],
    }
}

fn random_field(rng: &mut Rng, out: &mut Vec<u8>) {
    let num = rng.u64(1..48);
    match rng.u8(..3) {
        0 => {
            varint(num << 3, out);
            varint(INTERESTING[rng.usize(..INTERESTING.len())], out);
        }
        1 => {
            varint(num << 3 | 2, out);
            let s = HOSTILE[rng.usize(..HOSTILE.len())];
            varint(s.len() as u64, out);
            out.extend_from_slice(s);
        }
        _ => {
            varint(num << 3 | 5, out);
            out.extend_from_slice(&rng.u32(..).to_le_bytes());
        }
    }
}

/// Mutates one protobuf message (recursing into nested ones); `None` if `b` does not parse.
fn mutate_pb(b: &[u8], rng: &mut Rng, depth: u32) -> Option<Vec<u8>> {
    let fs = fields(b)?;
    let mut out = Vec::with_capacity(b.len() + 16);
    if fs.is_empty() || rng.u8(..16) == 0 {
        out.extend_from_slice(b);
        random_field(rng, &mut out);
        return Some(out);
    }
    let k = rng.usize(..fs.len());
    let f = &fs[k];
    out.extend_from_slice(&b[..f.start]);
    match rng.u8(..12) {
        // Drop the field.
        0 => {}
        // Repeat it (a repeated field grows, a scalar is overridden).
        1 => {
            let n = if rng.bool() { 2 } else { rng.usize(2..64) };
            for _ in 0..n {
                out.extend_from_slice(&b[f.start..f.end]);
            }
        }
        // Another wire type under the same number.
        2 => {
            varint(f.num << 3 | u64::from(rng.u8(..6)), &mut out);
            out.extend_from_slice(&b[f.vstart..f.end]);
        }
        _ => match f.wt {
            0 => {
                let mut at = f.vstart;
                let old = read_varint(b, &mut at).unwrap_or(0);
                varint(f.num << 3, &mut out);
                varint(interesting(rng, old), &mut out);
            }
            2 => {
                let v = &b[f.vstart..f.end];
                let new = match rng.u8(..8) {
                    0..=3 if depth < 6 => mutate_pb(v, rng, depth + 1),
                    4 => Some(HOSTILE[rng.usize(..HOSTILE.len())].to_vec()),
                    5 => {
                        let mut v = v.to_vec();
                        havoc(&mut v, rng);
                        Some(v)
                    }
                    _ => None,
                };
                match new {
                    Some(new) => {
                        varint(f.num << 3 | 2, &mut out);
                        varint(new.len() as u64, &mut out);
                        out.extend_from_slice(&new);
                    }
                    // A length that lies about what follows.
                    None => {
                        varint(f.num << 3 | 2, &mut out);
                        let len = (f.end - f.vstart) as u64;
                        varint(interesting(rng, len), &mut out);
                        out.extend_from_slice(v);
                    }
                }
            }
            _ => {
                out.extend_from_slice(&b[f.start..f.vstart]);
                for _ in f.vstart..f.end {
                    out.push(if rng.bool() { 0xff } else { rng.u8(..) });
                }
            }
        },
    }
    out.extend_from_slice(&b[f.end..]);
    Some(out)
}

/// Byte-level mutations (flip, set, insert, delete, copy), a few at a time.
pub fn havoc(b: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..rng.usize(1..8) {
        let len = b.len();
        match rng.u8(..7) {
            0 if len > 0 => b[rng.usize(..len)] ^= 1 << rng.u8(..8),
            1 if len > 0 => b[rng.usize(..len)] = [0, 0xff, 0x7f, 0x80, 1][rng.usize(..5)],
            2 => {
                let at = rng.usize(..=len);
                let n = rng.usize(1..16);
                b.splice(at..at, (0..n).map(|_| rng.u8(..)));
            }
            3 if len > 0 => {
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(32));
                b.drain(at..at + n);
            }
            4 if len > 4 => {
                let at = rng.usize(..len - 4);
                let v = INTERESTING[rng.usize(..INTERESTING.len())] as u32;
                b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            }
            5 if len > 1 => {
                let from = rng.usize(..len);
                let n = rng.usize(1..=(len - from).min(64));
                let chunk = b[from..from + n].to_vec();
                let at = rng.usize(..=len);
                b.splice(at..at, chunk);
            }
            _ => {}
        }
    }
}

/// Mutates image file `name` in place. `donors` are other images to splice entries from.
pub fn mutate_image(name: &str, bytes: &mut Vec<u8>, rng: &mut Rng, donors: &[&[u8]]) {
    let Some((head, mut entries)) = split(name, bytes) else {
        havoc(bytes, rng);
        return;
    };
    match rng.u8(..100) {
        // Byte havoc anywhere.
        0..=9 => havoc(bytes, rng),
        // Truncation.
        10..=14 => {
            let at = rng.usize(..=bytes.len());
            bytes.truncate(at);
        }
        // A size field that lies.
        15..=22 if !entries.is_empty() => {
            let mut offs = Vec::new();
            let mut at = head.len();
            for (p, d) in &entries {
                offs.push(at);
                at += 4 + p.len() + d.len();
            }
            let off = offs[rng.usize(..offs.len())];
            let old = u32::from_ne_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
            let new = interesting(rng, u64::from(old)) as u32;
            bytes[off..off + 4].copy_from_slice(&new.to_ne_bytes());
        }
        // Entries dropped, repeated, swapped, or taken from another image.
        23..=37 => {
            let n = entries.len();
            match rng.u8(..4) {
                0 if n > 0 => {
                    entries.remove(rng.usize(..n));
                }
                1 if n > 0 => {
                    let e = entries[rng.usize(..n)].clone();
                    let most = if rng.bool() { 3 } else { 200 };
                    for _ in 0..rng.usize(1..most) {
                        entries.insert(rng.usize(..=entries.len()), e.clone());
                    }
                }
                2 if n > 1 => {
                    let (a, b) = (rng.usize(..n), rng.usize(..n));
                    entries.swap(a, b);
                }
                _ if !donors.is_empty() => {
                    let d = donors[rng.usize(..donors.len())];
                    // Frames of any kind: try every kind's framing on it.
                    let got = image::ALL.iter().find_map(|k| {
                        std::panic::catch_unwind(|| image::entries_with_data(Path::new(""), *k, d))
                            .ok()?
                            .ok()
                    });
                    if let Some(frames) = got.filter(|f| !f.is_empty()) {
                        let (_, p, dd) = frames[rng.usize(..frames.len())];
                        let at = rng.usize(..=entries.len());
                        entries.insert(at, (p.to_vec(), dd.to_vec()));
                    }
                }
                _ => {}
            }
            *bytes = join(&head, &entries);
        }
        // Raw data after an entry grown, shrunk or emptied.
        38..=42 if !entries.is_empty() => {
            let k = rng.usize(..entries.len());
            let d = &mut entries[k].1;
            match rng.u8(..3) {
                0 => d.clear(),
                1 => d.truncate(rng.usize(..=d.len())),
                _ => d.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
            }
            *bytes = join(&head, &entries);
        }
        // Another kind's magic.
        43..=45 => {
            let k = image::ALL[rng.usize(..image::ALL.len())];
            let magic = match k.head {
                image::Head::Common(m) | image::Head::Bare(m) | image::Head::Service(m) => m,
            };
            let at = if head.len() >= 8 { 4 } else { 0 };
            if bytes.len() >= at + 4 {
                bytes[at..at + 4].copy_from_slice(&magic.to_ne_bytes());
            }
        }
        // Protobuf-aware mutation of one or a few entries, lengths fixed up (mostly).
        _ if !entries.is_empty() => {
            for _ in 0..rng.usize(1..4) {
                let k = rng.usize(..entries.len());
                match mutate_pb(&entries[k].0, rng, 0) {
                    Some(p) => entries[k].0 = p,
                    None => havoc(&mut entries[k].0, rng),
                }
            }
            *bytes = join(&head, &entries);
        }
        _ => havoc(bytes, rng),
    }
}

/// Mutates `cryo-manifest.json`: sizes, block lists and names (absolute, `..`, missing).
pub fn mutate_manifest(bytes: &mut Vec<u8>, rng: &mut Rng) {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        havoc(bytes, rng);
        return;
    };
    let huge = [
        0u64,
        1,
        4096,
        u32::MAX as u64,
        1 << 40,
        1 << 62,
        i64::MAX as u64,
        u64::MAX,
    ];
    match rng.u8(..8) {
        0 => v["block_size"] = serde_json::json!(huge[rng.usize(..huge.len())]),
        1 => v["format"] = serde_json::json!(rng.u32(..3)),
        2 => v["digest"] = serde_json::json!("md5"),
        _ => {
            if let Some(files) = v["files"].as_object_mut() {
                let names: Vec<String> = files.keys().cloned().collect();
                if names.is_empty() {
                    return;
                }
                let name = names[rng.usize(..names.len())].clone();
                match rng.u8(..6) {
                    0 => {
                        let e = files.remove(&name).expect("listed");
                        let new = [
                            "/etc/passwd",
                            "../../../../etc/passwd",
                            "/dev/zero",
                            "/proc/self/mem",
                            ".",
                            "",
                            "sub/dir.img",
                        ][rng.usize(..7)];
                        files.insert(new.to_string(), e);
                    }
                    1 => files[&name]["size"] = serde_json::json!(huge[rng.usize(..huge.len())]),
                    2 => {
                        let b = &mut files[&name]["blocks"];
                        if let Some(a) = b.as_array_mut() {
                            if rng.bool() {
                                a.clear();
                            } else {
                                for _ in 0..rng.usize(1..1000) {
                                    a.push(serde_json::json!("00"));
                                }
                            }
                        }
                    }
                    3 => files[&name]["blocks"] = serde_json::json!(["zz"]),
                    _ => {
                        files.remove(&name);
                    }
                }
            }
        }
    }
    *bytes = serde_json::to_vec(&v).expect("json");
}
