//! The container runtime's side of a checkpoint: what podman or containerd saved next to the
//! images — the container's name and image, its OCI runtime spec (read as typed structures
//! with the oci-spec crate), its writable layer, the network status.
//!
//! podman (`container checkpoint --export`, or the checkpoint directory it keeps with
//! `--keep`): `config.dump` (podman's container config: name, id, image), `spec.dump` (the
//! OCI spec), `network.status`, `rootfs-diff.tar` and `deleted.files` (the writable layer),
//! `devshm-checkpoint.tar` (/dev/shm), `stats-dump`.
//!
//! containerd (`ctr c checkpoint`, exported with `ctr images export --skip-manifest-json`):
//! an OCI index whose entries are the images tar, the spec as a protobuf `Any`
//! (`...checkpoint.config.v1+proto`), the writable layer (`--rw`, a gzipped tar), and the
//! runtime options; the image name and runtime are annotations. The container's id is not
//! saved except in the spec's `linux.cgroupsPath` (`/NAMESPACE/ID`).

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;
use prost::Message;
use serde::Serialize;

use super::model::{ContainerInfo, SpecSummary};
use super::source::{blob_name, Container, Source, CONTAINERD_CRIU};
use super::InspectError;

/// containerd's checkpoint config: a `google.protobuf.Any` holding the spec as JSON.
#[derive(Clone, PartialEq, Message)]
struct AnyMsg {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

const CONTAINERD_CONFIG: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
const CONTAINERD_RW: &str = "application/vnd.containerd.container.rw.tar";

/// The serialized name of a spec enum value (`CAP_KILL`, `pid`, `SCMP_ACT_ERRNO`).
fn name_of<T: Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

/// The parts of a spec `cryo inspect` prints.
pub fn summarize_spec(s: &Spec) -> SpecSummary {
    let mut out = SpecSummary {
        oci_version: s.version().clone(),
        hostname: s.hostname().clone(),
        ..SpecSummary::default()
    };
    if let Some(p) = s.process() {
        out.args = p.args().clone().unwrap_or_default();
        out.env = p.env().clone().unwrap_or_default();
        out.cwd = Some(p.cwd().display().to_string());
        out.uid = Some(p.user().uid());
        out.gid = Some(p.user().gid());
        out.terminal = p.terminal().unwrap_or(false);
        out.no_new_privileges = p.no_new_privileges().unwrap_or(false);
        if let Some(eff) = p
            .capabilities()
            .as_ref()
            .and_then(|c| c.effective().as_ref())
        {
            let mut caps: Vec<String> = eff.iter().map(name_of).collect();
            caps.sort();
            out.capabilities = caps;
        }
    }
    if let Some(r) = s.root() {
        out.root = Some(r.path().display().to_string());
        out.root_readonly = r.readonly().unwrap_or(false);
    }
    for m in s.mounts().iter().flatten() {
        out.mounts.push((
            m.destination().display().to_string(),
            m.typ().clone().unwrap_or_default(),
            m.source()
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            m.options().clone().unwrap_or_default().join(","),
        ));
    }
    if let Some(l) = s.linux() {
        for n in l.namespaces().iter().flatten() {
            out.namespaces.push((
                name_of(&n.typ()),
                n.path()
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ));
        }
        out.cgroups_path = l.cgroups_path().as_ref().map(|p| p.display().to_string());
        if let Some(sc) = l.seccomp() {
            out.seccomp = Some((
                name_of(&sc.default_action()),
                sc.syscalls().as_ref().map(Vec::len).unwrap_or(0),
            ));
        }
    }
    out.annotations = s
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect::<BTreeMap<_, _>>();
    out
}

/// Parses an OCI spec: the typed view (if it parses) and the JSON as saved.
fn read_spec(
    bytes: &[u8],
    what: &str,
    notes: &mut Vec<(String, String)>,
) -> (Option<SpecSummary>, Option<serde_json::Value>) {
    let raw: Option<serde_json::Value> = match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push((what.into(), format!("not valid JSON: {e}")));
            return (None, None);
        }
    };
    match serde_json::from_slice::<Spec>(bytes) {
        Ok(s) => (Some(summarize_spec(&s)), raw),
        Err(e) => {
            notes.push((what.into(), format!("not an OCI runtime spec: {e}")));
            (None, raw)
        }
    }
}

/// Reads the runtime's files; `None` for a checkpoint of plain processes.
pub fn read(
    src: &Source,
    notes: &mut Vec<(String, String)>,
) -> Result<Option<ContainerInfo>, InspectError> {
    match src.container {
        Container::None => Ok(None),
        Container::Podman => podman(src, notes).map(Some),
        Container::Containerd => containerd(src, notes).map(Some),
    }
}

fn str_at(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(String::from)
}

fn podman(src: &Source, notes: &mut Vec<(String, String)>) -> Result<ContainerInfo, InspectError> {
    let mut c = ContainerInfo {
        runtime: "podman".into(),
        ..ContainerInfo::default()
    };
    for m in src.members() {
        if !m.name.starts_with("checkpoint/") {
            c.files.push((m.name.clone(), m.size));
        }
    }
    match src.member("config.dump") {
        Some(_) => match src.json("config.dump") {
            Ok(cfg) => {
                c.name = str_at(&cfg, "name");
                c.id = str_at(&cfg, "id");
                c.image = str_at(&cfg, "rootfsImageName").or_else(|| str_at(&cfg, "RawImageName"));
                c.image_id = str_at(&cfg, "rootfsImageID");
                c.created = str_at(&cfg, "createdTime");
            }
            Err(e) => notes.push(("config.dump".into(), e.to_string())),
        },
        None => notes.push((
            "config.dump".into(),
            "missing: the container's name and image are unknown".into(),
        )),
    }
    match src.member("spec.dump") {
        Some(m) => {
            let (s, raw) = read_spec(&src.bytes(m)?, "spec.dump", notes);
            c.spec = s;
            c.oci_spec = raw;
        }
        None => notes.push(("spec.dump".into(), "missing: no OCI runtime spec".into())),
    }
    if src.member("network.status").is_some() {
        match src.json("network.status") {
            Ok(v) => c.network = Some(v),
            Err(e) => notes.push(("network.status".into(), e.to_string())),
        }
    }
    if src.member("deleted.files").is_some() {
        match src.json("deleted.files") {
            Ok(v) => {
                c.deleted_files = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            }
            Err(e) => notes.push(("deleted.files".into(), e.to_string())),
        }
    }
    for (name, slot) in [
        ("rootfs-diff.tar", &mut c.rootfs_diff),
        ("devshm-checkpoint.tar", &mut c.dev_shm),
    ] {
        match src.tar_summary(name) {
            Ok(s) => *slot = s,
            Err(e) => notes.push((name.into(), e.to_string())),
        }
    }
    Ok(c)
}

fn containerd(
    src: &Source,
    notes: &mut Vec<(String, String)>,
) -> Result<ContainerInfo, InspectError> {
    let mut c = ContainerInfo {
        runtime: "containerd".into(),
        ..ContainerInfo::default()
    };
    let empty = serde_json::Value::Null;
    let ix = src.oci_index.as_ref().unwrap_or(&empty);
    let ann = &ix["annotations"];
    c.image = str_at(ann, "org.opencontainers.image.ref.name");
    c.runtime_type = str_at(ann, "io.containerd.checkpoint.runtime");
    c.snapshotter = str_at(ann, "io.containerd.checkpoint.snapshotter");
    if let Ok(top) = src.json("index.json") {
        for d in top["manifests"].as_array().into_iter().flatten() {
            if let Some(n) = str_at(&d["annotations"], "io.containerd.image.name") {
                c.checkpoint_name = Some(n);
            }
        }
    }
    for d in ix["manifests"].as_array().into_iter().flatten() {
        let media = d["mediaType"].as_str().unwrap_or("");
        let digest = d["digest"].as_str().unwrap_or("");
        let name = blob_name(digest);
        let size = d["size"].as_u64().unwrap_or(0);
        c.files.push((format!("{name} ({media})"), size));
        let Some(m) = src.member(&name) else {
            if media != CONTAINERD_CRIU {
                notes.push((
                    format!("{media} {digest}"),
                    "listed in the index but not in the archive".into(),
                ));
            }
            continue;
        };
        if media == CONTAINERD_CONFIG {
            let bytes = src.bytes(m)?;
            match AnyMsg::decode(bytes.as_slice()) {
                Ok(any) if any.type_url.ends_with("/Spec") => {
                    let (s, raw) = read_spec(&any.value, "checkpoint config", notes);
                    c.spec = s;
                    c.oci_spec = raw;
                }
                Ok(any) => notes.push((
                    "checkpoint config".into(),
                    format!("holds a {}, not an OCI spec", any.type_url),
                )),
                Err(e) => notes.push((
                    "checkpoint config".into(),
                    format!("not a protobuf Any: {e}"),
                )),
            }
        } else if media == CONTAINERD_RW || media.starts_with("application/vnd.oci.image.layer.") {
            match src.tar_summary(&name) {
                Ok(s) => c.rootfs_diff = s,
                Err(e) => notes.push(("rw layer".into(), e.to_string())),
            }
        }
    }
    if let Some(cg) = c.spec.as_ref().and_then(|s| s.cgroups_path.as_deref()) {
        c.id = cg.rsplit(['/', ':']).next().map(String::from);
    }
    Ok(c)
}
