//! CPU compatibility: `cpuinfo.img` and `--cpu-cap`, as CRIU has them, so that a tree moved to
//! another machine is refused there, before anything is created, when that CPU lacks what the
//! tree may use.
//!
//! Dump (`--cpu-cap`, or `cryo cpuinfo dump`) records this CPU: vendor, family, model,
//! stepping, CPUID's feature words in CRIU's layout (19 words, `capability_ver` 2), the XSAVE
//! features the kernel lets user space use and the XSAVE frame sizes. Restore (`--cpu-cap`,
//! `cryo cpuinfo check`, `cryo check --cpu-cap -D DIR`) compares that record with this CPU,
//! with CRIU's checks: `fpu` (the saved FPU state fits: FPU, FXSR, OSXSAVE and XSAVES where
//! the source had them, every saved xfeature here, the same frame sizes), `ins` (every
//! instruction-set extension of the source is here; this CPU may have more) and `cpu` (every
//! feature word equal). Where CRIU says only that something does not match, cryo names each
//! missing feature.

use crate::image::{self, pb, ImageDir, ImageError};
use crate::sys::cpuid::cpuid;

/// `--cpu-cap` bits (CRIU's values, also RPC `cpu_cap`).
pub const CAP_FPU: u32 = 1;
pub const CAP_CPU: u32 = 1 << 1;
pub const CAP_INS: u32 = 1 << 2;
/// Write the image at dump, read and check it at restore.
pub const CAP_IMAGE: u32 = 1 << 3;
pub const CAP_ALL: u32 = CAP_FPU | CAP_CPU | CAP_INS;
/// Without `--cpu-cap`: what the checks would be, but no image is written or read.
pub const CAP_DEFAULT: u32 = CAP_FPU | CAP_INS;

/// Feature words, in CRIU's order (each is one CPUID register, or Linux-defined).
const NCAPINTS: usize = 19;
const W_1_EDX: usize = 0;
const W_8000_0001_EDX: usize = 1;
const W_LNX_1: usize = 3;
const W_1_ECX: usize = 4;
const W_8000_0001_ECX: usize = 6;
const W_7_0_EBX: usize = 9;
const W_D_1_EAX: usize = 10;
const W_7_0_ECX: usize = 11;
const W_F_1_EDX: usize = 12;
const W_8000_0008_EBX: usize = 13;
const W_6_EAX: usize = 14;
const W_8000_000A_EDX: usize = 15;
const W_F_0_EDX: usize = 16;
const W_8000_0007_EBX: usize = 17;
const W_7_0_EDX: usize = 18;

/// A feature: its word and bit.
type Feature = (usize, u32, &'static str);
const FPU: Feature = (W_1_EDX, 0, "fpu");
const FXSR: Feature = (W_1_EDX, 24, "fxsr");
const XSAVE: Feature = (W_1_ECX, 26, "xsave");
const OSXSAVE: Feature = (W_1_ECX, 27, "osxsave");
const XSAVES: Feature = (W_D_1_EAX, 3, "xsaves");
const REP_GOOD: Feature = (W_LNX_1, 16, "rep_good");
const NOPL: Feature = (W_LNX_1, 20, "nopl");
const CPUID: Feature = (W_LNX_1, 25, "cpuid");
const ERMS: Feature = (W_7_0_EBX, 9, "erms");
const CQM_LLC: Feature = (W_F_0_EDX, 1, "cqm_llc");

/// The instruction-set extensions `ins` compares (CRIU's list; names as in /proc/cpuinfo).
const INSTRUCTIONS: &[Feature] = &[
    FPU,
    (W_1_EDX, 4, "tsc"),
    (W_1_EDX, 8, "cx8"),
    (W_1_EDX, 11, "sep"),
    (W_1_EDX, 15, "cmov"),
    (W_1_EDX, 19, "clflush"),
    (W_1_EDX, 23, "mmx"),
    FXSR,
    (W_1_EDX, 25, "sse"),
    (W_1_EDX, 26, "sse2"),
    (W_8000_0001_EDX, 11, "syscall"),
    (W_8000_0001_EDX, 22, "mmxext"),
    (W_8000_0001_EDX, 27, "rdtscp"),
    (W_8000_0001_EDX, 30, "3dnowext"),
    (W_8000_0001_EDX, 31, "3dnow"),
    REP_GOOD,
    NOPL,
    (W_1_ECX, 0, "pni"),
    (W_1_ECX, 1, "pclmulqdq"),
    (W_1_ECX, 3, "monitor"),
    (W_1_ECX, 9, "ssse3"),
    (W_1_ECX, 13, "cx16"),
    (W_1_ECX, 19, "sse4_1"),
    (W_1_ECX, 20, "sse4_2"),
    (W_1_ECX, 22, "movbe"),
    (W_1_ECX, 23, "popcnt"),
    (W_1_ECX, 25, "aes"),
    XSAVE,
    OSXSAVE,
    (W_1_ECX, 28, "avx"),
    (W_1_ECX, 29, "f16c"),
    (W_1_ECX, 30, "rdrand"),
    (W_8000_0001_ECX, 5, "abm"),
    (W_8000_0001_ECX, 6, "sse4a"),
    (W_8000_0001_ECX, 7, "misalignsse"),
    (W_8000_0001_ECX, 8, "3dnowprefetch"),
    (W_8000_0001_ECX, 11, "xop"),
    (W_8000_0001_ECX, 16, "fma4"),
    (W_8000_0001_ECX, 21, "tbm"),
    (W_7_0_EBX, 0, "fsgsbase"),
    (W_7_0_EBX, 3, "bmi1"),
    (W_7_0_EBX, 4, "hle"),
    (W_7_0_EBX, 5, "avx2"),
    (W_7_0_EBX, 8, "bmi2"),
    ERMS,
    (W_7_0_EBX, 11, "rtm"),
    (W_7_0_EBX, 14, "mpx"),
    (W_7_0_EBX, 16, "avx512f"),
    (W_7_0_EBX, 17, "avx512dq"),
    (W_7_0_EBX, 18, "rdseed"),
    (W_7_0_EBX, 19, "adx"),
    (W_7_0_EBX, 23, "clflushopt"),
    (W_7_0_EBX, 26, "avx512pf"),
    (W_7_0_EBX, 27, "avx512er"),
    (W_7_0_EBX, 28, "avx512cd"),
    (W_7_0_EBX, 29, "sha_ni"),
    (W_7_0_EBX, 30, "avx512bw"),
    (W_7_0_EBX, 31, "avx512vl"),
    (W_D_1_EAX, 0, "xsaveopt"),
    (W_D_1_EAX, 1, "xsavec"),
    (W_D_1_EAX, 2, "xgetbv1"),
    (W_7_0_ECX, 1, "avx512vbmi"),
    (W_7_0_ECX, 6, "avx512_vbmi2"),
    (W_7_0_ECX, 8, "gfni"),
    (W_7_0_ECX, 9, "vaes"),
    (W_7_0_ECX, 10, "vpclmulqdq"),
    (W_7_0_ECX, 11, "avx512_vnni"),
    (W_7_0_ECX, 12, "avx512_bitalg"),
    (W_7_0_ECX, 13, "tme"),
    (W_7_0_ECX, 14, "avx512_vpopcntdq"),
    (W_7_0_ECX, 22, "rdpid"),
    (W_8000_0008_EBX, 0, "clzero"),
    (W_7_0_EDX, 2, "avx512_4vnniw"),
    (W_7_0_EDX, 3, "avx512_4fmaps"),
];

/// XSAVE components user space may use (x87, SSE, AVX, MPX, AVX-512, PKRU), and the feature
/// each needs in CPUID (components 0..=10 in order).
const XFEATURES_USER: u64 = 0x2ff;
/// What CRIU takes away as supervisor state: processor trace (bit 8) and the number 10.
const CRIU_SUPERVISOR_MASK: u64 = (1 << 8) | 10;
const XFEATURE_NEEDS: [(usize, u32); 11] = [
    (W_1_EDX, 0),    // x87: fpu
    (W_1_EDX, 25),   // SSE: sse
    (W_1_ECX, 28),   // AVX: avx
    (W_7_0_EBX, 14), // MPX bounds: mpx
    (W_7_0_EBX, 14), // MPX CSR: mpx
    (W_7_0_EBX, 16), // AVX-512 opmask: avx512f
    (W_7_0_EBX, 16), // AVX-512 ZMM_Hi256: avx512f
    (W_7_0_EBX, 16), // AVX-512 Hi16_ZMM: avx512f
    (W_7_0_EBX, 25), // processor trace: intel_pt
    (W_7_0_ECX, 3),  // PKRU: pku
    (W_6_EAX, 13),   // HDC: hdc
];
const XFEATURE_NAMES: [&str; 11] = [
    "x87",
    "sse",
    "avx",
    "mpx-bndregs",
    "mpx-bndcsr",
    "avx512-opmask",
    "avx512-zmm_hi256",
    "avx512-hi16_zmm",
    "pt",
    "pkru",
    "hdc",
];

/// Why CPU compatibility could not be recorded or checked, or fails.
#[derive(Debug, thiserror::Error)]
pub enum CpuinfoError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("this CPU's vendor {0:?} is neither Intel nor AMD (nor Hygon): cpuinfo.img cannot describe it (use --cpu-cap=none)")]
    Vendor(String),
    #[error("{path}: {what}")]
    Bad { path: String, what: String },
    #[error("{dir}: no cpuinfo.img: the dump was made without --cpu-cap, so there is nothing to check this CPU against (restore without --cpu-cap, or dump again with it)")]
    NoImage { dir: String },
    #[error("thread {tid}'s saved registers hold XSAVE state this CPU does not have: {missing} (xstate_bv {xstate_bv:#x}, this CPU enables {here:#x}); it ran on a CPU with them and its code uses them (it would die of SIGILL here): restore it on such a CPU")]
    SavedState {
        tid: u32,
        missing: String,
        xstate_bv: u64,
        here: u64,
    },
    #[error("this CPU cannot run the tree saved in {dir} (dumped on {source_cpu}): {}. Restore it on a CPU that has them, or restore with --cpu-cap=none at your own risk", .problems.join("; "))]
    Incompatible {
        dir: String,
        source_cpu: String,
        problems: Vec<String>,
    },
}

// Each message says what to do already.
impl super::error::Failure for CpuinfoError {}

/// What a CPU can do, as `cpuinfo.img` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuDesc {
    /// 1 Intel, 2 AMD (`cpuinfo_x86_entry.vendor`).
    pub vendor: i32,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub caps: [u32; NCAPINTS],
    pub model_id: String,
    pub xfeatures_mask: u64,
    pub xsave_size: u32,
    pub xsave_size_max: u32,
}

fn has(caps: &[u32; NCAPINTS], (w, b, _): Feature) -> bool {
    caps[w] & (1 << b) != 0
}

impl CpuDesc {
    /// This CPU, read with CPUID (CRIU's reading of it, so that both write the same image).
    pub fn here() -> Result<CpuDesc, CpuinfoError> {
        let [max, b, c, d] = cpuid(0, 0);
        let vendor_bytes: Vec<u8> = [b, d, c].iter().flat_map(|r| r.to_le_bytes()).collect();
        let vendor_name = String::from_utf8_lossy(&vendor_bytes).into_owned();
        let vendor = match vendor_name.as_str() {
            "GenuineIntel" => 1,
            "AuthenticAMD" | "HygonGenuine" => 2,
            _ => return Err(CpuinfoError::Vendor(vendor_name)),
        };
        let mut caps = [0u32; NCAPINTS];
        let (mut family, mut model, mut stepping) = (4, 0, 0);
        if max >= 1 {
            let [a, _, c, d] = cpuid(1, 0);
            family = (a >> 8) & 0xf;
            model = (a >> 4) & 0xf;
            stepping = a & 0xf;
            if family == 0xf {
                family += (a >> 20) & 0xff;
            }
            if family >= 6 {
                model += ((a >> 16) & 0xf) << 4;
            }
            caps[W_1_EDX] = d;
            caps[W_1_ECX] = c;
        }
        if max >= 6 {
            caps[W_6_EAX] = cpuid(6, 0)[0];
        }
        if max >= 7 {
            let [_, b, c, d] = cpuid(7, 0);
            caps[W_7_0_EBX] = b;
            caps[W_7_0_ECX] = c;
            caps[W_7_0_EDX] = d;
        }
        if max >= 0xd {
            caps[W_D_1_EAX] = cpuid(0xd, 1)[0];
        }
        if max >= 0xf {
            caps[W_F_0_EDX] = cpuid(0xf, 0)[3];
            if has(&caps, CQM_LLC) {
                caps[W_F_1_EDX] = cpuid(0xf, 1)[3];
            }
        }
        let ext = cpuid(0x8000_0000, 0)[0];
        if ext & 0xffff_0000 == 0x8000_0000 && ext >= 0x8000_0001 {
            let [_, _, c, d] = cpuid(0x8000_0001, 0);
            caps[W_8000_0001_ECX] = c;
            caps[W_8000_0001_EDX] = d;
        }
        let mut model_id = String::new();
        if ext >= 0x8000_0004 {
            let bytes: Vec<u8> = (0x8000_0002..=0x8000_0004)
                .flat_map(|l| cpuid(l, 0))
                .flat_map(u32::to_le_bytes)
                .collect();
            let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
            model_id = String::from_utf8_lossy(&bytes[..end])
                .trim_start_matches(' ')
                .to_string();
        }
        if ext >= 0x8000_0007 {
            caps[W_8000_0007_EBX] = cpuid(0x8000_0007, 0)[1];
        }
        if ext >= 0x8000_000a {
            caps[W_8000_000A_EDX] = cpuid(0x8000_000a, 0)[3];
        }
        if ext >= 0x8000_0008 {
            caps[W_8000_0008_EBX] = cpuid(0x8000_0008, 0)[1];
        }
        // What Linux defines itself, as CRIU derives it.
        let set = |caps: &mut [u32; NCAPINTS], (w, b, _): Feature, on: bool| {
            if on {
                caps[w] |= 1 << b;
            } else {
                caps[w] &= !(1 << b);
            }
        };
        set(&mut caps, CPUID, true);
        set(&mut caps, NOPL, true);
        if max < 0xd {
            set(&mut caps, XSAVE, false);
        }
        match vendor {
            1 if family == 15 => {
                set(&mut caps, REP_GOOD, false);
                set(&mut caps, ERMS, false);
            }
            1 if family == 6 => set(&mut caps, REP_GOOD, true),
            2 => {
                caps[W_1_EDX] &= !(1 << 31);
                if family >= 0x10 {
                    set(&mut caps, REP_GOOD, true);
                }
                if family == 0xf {
                    let level = cpuid(1, 0)[0];
                    if (0x0f48..0x0f50).contains(&level) || level >= 0x0f58 {
                        set(&mut caps, REP_GOOD, true);
                    }
                }
            }
            _ => {}
        }
        let (mut xfeatures_mask, mut xsave_size, mut xsave_size_max) = (0, 0, 0);
        if has(&caps, XSAVE) {
            let [a, b, c, d] = cpuid(0xd, 0);
            xfeatures_mask = u64::from(a) | (u64::from(d) << 32);
            for (i, &(w, bit)) in XFEATURE_NEEDS.iter().enumerate() {
                if caps[w] & (1 << bit) == 0 {
                    xfeatures_mask &= !(1 << i);
                }
            }
            xfeatures_mask &= XFEATURES_USER;
            // CRIU 4.2 also clears bits 1 (SSE) and 3 (MPX bounds) here: its supervisor mask
            // names component 10 (HDC) by number where its bit was meant. cryo records the
            // same value, so that each tool can check the other's images; SSE is part of
            // every x86_64 CPU, and MPX is gone from current ones.
            xfeatures_mask &= !CRIU_SUPERVISOR_MASK;
            xsave_size = b;
            xsave_size_max = c;
        }
        Ok(CpuDesc {
            vendor,
            family,
            model,
            stepping,
            caps,
            model_id,
            xfeatures_mask,
            xsave_size,
            xsave_size_max,
        })
    }

    fn to_pb(&self) -> pb::CpuinfoEntry {
        pb::CpuinfoEntry {
            x86_entry: vec![pb::CpuinfoX86Entry {
                vendor_id: self.vendor,
                cpu_family: self.family,
                model: self.model,
                stepping: self.stepping,
                capability_ver: 2,
                capability: self.caps.to_vec(),
                model_id: (!self.model_id.is_empty()).then(|| self.model_id.clone()),
                xfeatures_mask: Some(self.xfeatures_mask),
                xsave_size: Some(self.xsave_size),
                xsave_size_max: Some(self.xsave_size_max),
            }],
            ..Default::default()
        }
    }

    /// The record in an image; fields an old image lacks are taken from `here`, as CRIU does.
    fn from_pb(e: &pb::CpuinfoEntry, here: &CpuDesc, path: &str) -> Result<CpuDesc, CpuinfoError> {
        let bad = |what: String| CpuinfoError::Bad {
            path: path.to_string(),
            what,
        };
        let [x] = e.x86_entry.as_slice() else {
            return Err(bad(format!(
                "expected one x86 entry, found {} (an image from another architecture?)",
                e.x86_entry.len()
            )));
        };
        if x.vendor_id != 1 && x.vendor_id != 2 {
            return Err(bad(format!("unknown CPU vendor {}", x.vendor_id)));
        }
        let words = match x.capability_ver {
            1 => 12,
            2 => NCAPINTS,
            v => return Err(bad(format!("unknown capability version {v}"))),
        };
        if x.capability.len() != words {
            return Err(bad(format!(
                "{} capability words where version {} has {words}",
                x.capability.len(),
                x.capability_ver
            )));
        }
        let mut caps = here.caps;
        caps[..words].copy_from_slice(&x.capability);
        Ok(CpuDesc {
            vendor: x.vendor_id,
            family: x.cpu_family,
            model: x.model,
            stepping: x.stepping,
            caps,
            model_id: x.model_id.clone().unwrap_or_default(),
            xfeatures_mask: x.xfeatures_mask.unwrap_or(here.xfeatures_mask),
            xsave_size: x.xsave_size.unwrap_or(here.xsave_size),
            xsave_size_max: x.xsave_size_max.unwrap_or(here.xsave_size_max),
        })
    }

    fn name(&self) -> String {
        let id = if self.model_id.is_empty() {
            "an unnamed CPU"
        } else {
            self.model_id.as_str()
        };
        format!(
            "{id}, family {} model {} stepping {}",
            self.family, self.model, self.stepping
        )
    }
}

/// What `saved` needs that `here` lacks, under the checks in `cap` (empty: compatible).
pub fn problems(saved: &CpuDesc, here: &CpuDesc, cap: u32) -> Vec<String> {
    let mut p = Vec::new();
    if cap & CAP_FPU != 0 {
        let missing: Vec<&str> = [FPU, FXSR, OSXSAVE, XSAVES]
            .into_iter()
            .filter(|&f| has(&saved.caps, f) && !has(&here.caps, f))
            .map(|f| f.2)
            .collect();
        if !missing.is_empty() {
            p.push(format!("FPU features missing here: {}", missing.join(" ")));
        }
        let extra = saved.xfeatures_mask & !here.xfeatures_mask;
        if extra != 0 {
            let names: Vec<String> = (0..64)
                .filter(|i| extra & (1 << i) != 0)
                .map(|i| {
                    XFEATURE_NAMES
                        .get(i)
                        .map_or_else(|| format!("xfeature {i}"), |n| (*n).to_string())
                })
                .collect();
            p.push(format!(
                "XSAVE state this CPU cannot hold: {} (mask {extra:#x})",
                names.join(" ")
            ));
        }
        if saved.xsave_size != here.xsave_size {
            p.push(format!(
                "XSAVE frame size {} bytes there, {} here (the C library sizes signal frames by it)",
                saved.xsave_size, here.xsave_size
            ));
        }
        if saved.xsave_size_max != here.xsave_size_max {
            p.push(format!(
                "largest XSAVE frame {} bytes there, {} here",
                saved.xsave_size_max, here.xsave_size_max
            ));
        }
    }
    if cap & CAP_INS != 0 {
        let missing: Vec<&str> = INSTRUCTIONS
            .iter()
            .filter(|&&f| has(&saved.caps, f) && !has(&here.caps, f))
            .map(|f| f.2)
            .collect();
        if !missing.is_empty() {
            p.push(format!("instructions missing here: {}", missing.join(" ")));
        }
    }
    if cap & CAP_CPU != 0 && saved.caps != here.caps {
        let words: Vec<String> = (0..NCAPINTS)
            .filter(|&w| saved.caps[w] != here.caps[w])
            .map(|w| {
                format!(
                    "word {w} {:#010x} there, {:#010x} here",
                    saved.caps[w], here.caps[w]
                )
            })
            .collect();
        p.push(format!(
            "CPU features differ (--cpu-cap=cpu wants them equal): {}",
            words.join(", ")
        ));
    }
    p
}

/// Refuses registers whose saved XSAVE area holds state components (AVX-512, AMX, ...) this
/// CPU has not enabled: always checked at restore, with or without `--cpu-cap`.
pub fn check_saved_state(tid: u32, fp: &pb::UserX86FpregsEntry) -> Result<(), CpuinfoError> {
    let raw_bv = fp
        .cryo_xsave_raw
        .as_ref()
        .and_then(|r| r.get(512..520))
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let Some(bv) = fp.xsave.as_ref().map(|x| x.xstate_bv).or(raw_bv) else {
        return Ok(());
    };
    let here = crate::sys::cpuid::xcr0().unwrap_or(0b11);
    let extra = bv & !here;
    if extra == 0 {
        return Ok(());
    }
    let names: Vec<String> = (0..64)
        .filter(|i| extra & (1 << i) != 0)
        .map(|i| {
            XFEATURE_NAMES
                .get(i)
                .map_or_else(|| format!("xfeature {i}"), |n| (*n).to_string())
        })
        .collect();
    Err(CpuinfoError::SavedState {
        tid,
        missing: names.join(" "),
        xstate_bv: bv,
        here,
    })
}

/// Writes `cpuinfo.img` for this CPU.
pub fn dump(dir: &ImageDir) -> Result<(), CpuinfoError> {
    let here = CpuDesc::here()?;
    tracing::info!(cpu = %here.name(), xfeatures = format_args!("{:#x}", here.xfeatures_mask), "cpuinfo.img written");
    dir.write("cpuinfo.img", image::CPUINFO, &[here.to_pb()])?;
    Ok(())
}

/// Checks `cpuinfo.img` in `dir` against this CPU with the checks in `cap`.
pub fn check(dir: &ImageDir, cap: u32) -> Result<(), CpuinfoError> {
    let path = dir.file("cpuinfo.img").display().to_string();
    let dir_name = dir.file("").display().to_string();
    let Some(entries) = dir.read_opt::<pb::CpuinfoEntry>("cpuinfo.img", image::CPUINFO)? else {
        return Err(CpuinfoError::NoImage { dir: dir_name });
    };
    let [e] = entries.as_slice() else {
        return Err(CpuinfoError::Bad {
            path,
            what: format!("expected one entry, found {}", entries.len()),
        });
    };
    let here = CpuDesc::here()?;
    let saved = CpuDesc::from_pb(e, &here, &path)?;
    let p = problems(&saved, &here, cap);
    if p.is_empty() {
        tracing::info!(saved = %saved.name(), here = %here.name(), cap, "the CPU fits the images");
        Ok(())
    } else {
        Err(CpuinfoError::Incompatible {
            dir: dir_name,
            source_cpu: saved.name(),
            problems: p,
        })
    }
}

/// `--cpu-cap` values applied in order to CRIU's default, as CRIU does: `fpu`, `cpu`, `ins`,
/// `all`, `none`, `^` inverts what follows up to the next `,`; an empty value (a bare
/// `--cpu-cap`) means `all`. Any request but `none` writes (dump) and checks (restore) the
/// image. `None`: no `--cpu-cap` given.
pub fn parse_cap(values: &[String]) -> Result<Option<u32>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut cap = CAP_DEFAULT;
    for v in values {
        if v.is_empty() {
            cap |= CAP_ALL | CAP_IMAGE;
            continue;
        }
        let mut rest = v.as_str();
        let mut inverse = false;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('^') {
                inverse = !inverse;
                rest = r;
                continue;
            }
            if let Some(r) = rest.strip_prefix(',') {
                inverse = false;
                rest = r;
                continue;
            }
            let (word, bits) = [
                ("fpu", CAP_FPU),
                ("all", CAP_ALL),
                ("none", 0),
                ("cpu", CAP_CPU),
                ("ins", CAP_INS),
            ]
            .into_iter()
            .find(|(w, _)| rest.starts_with(w))
            .ok_or_else(|| format!("Unknown FPU mode `{rest}' selected"))?;
            rest = &rest[word.len()..];
            cap = match (word, inverse) {
                ("none", false) => 0,
                ("none", true) => CAP_ALL,
                (_, false) => cap | bits,
                (_, true) => cap & !bits,
            };
        }
        if cap != 0 {
            cap |= CAP_IMAGE;
        }
    }
    Ok(Some(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(v: &[&str]) -> Option<u32> {
        parse_cap(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn cpu_cap_words_as_criu_reads_them() {
        assert_eq!(caps(&[]), None);
        assert_eq!(caps(&[""]), Some(CAP_ALL | CAP_IMAGE));
        assert_eq!(caps(&["fpu"]), Some(CAP_FPU | CAP_INS | CAP_IMAGE));
        assert_eq!(caps(&["none"]), Some(0));
        assert_eq!(caps(&["^ins"]), Some(CAP_FPU | CAP_IMAGE));
        assert_eq!(caps(&["^fpu,cpu"]), Some(CAP_INS | CAP_CPU | CAP_IMAGE));
        assert_eq!(caps(&["^none"]), Some(CAP_ALL | CAP_IMAGE));
        assert!(parse_cap(&["avx".to_string()]).is_err());
    }

    #[test]
    fn this_cpu_fits_itself_and_a_missing_feature_is_named() {
        let here = CpuDesc::here().unwrap();
        assert!(here.xsave_size == 0 || here.xfeatures_mask & 1 == 1);
        assert!(problems(&here, &here, CAP_ALL).is_empty());
        // A source CPU with AVX2 and one more XSAVE component than this one.
        let mut saved = here.clone();
        saved.caps[W_7_0_EBX] |= 1 << 5;
        saved.xfeatures_mask |= 1 << 9;
        let mut lesser = here.clone();
        lesser.caps[W_7_0_EBX] &= !(1 << 5);
        lesser.xfeatures_mask &= !(1 << 9);
        let p = problems(&saved, &lesser, CAP_FPU | CAP_INS).join("; ");
        assert!(p.contains("avx2") && p.contains("pkru"), "{p}");
        // Only the FPU checked: instructions are the user's business.
        let p = problems(&saved, &lesser, CAP_FPU).join("; ");
        assert!(!p.contains("avx2") && p.contains("pkru"), "{p}");
        // A richer destination is fine for `ins`, not for `cpu`.
        assert!(problems(&lesser, &saved, CAP_INS).is_empty());
        assert!(!problems(&lesser, &saved, CAP_CPU).is_empty());
    }

    #[test]
    fn an_image_round_trips() {
        let here = CpuDesc::here().unwrap();
        let back = CpuDesc::from_pb(&here.to_pb(), &here, "cpuinfo.img").unwrap();
        assert_eq!(back, here);
    }
}
