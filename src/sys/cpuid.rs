//! The CPUID instruction: what this CPU says it can do (for `cpuinfo.img` and `--cpu-cap`).

/// CPUID leaf `leaf`, sub-leaf `sub`: `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads (the intrinsic is `unsafe` on
    // some toolchains and safe on others).
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, sub) };
    [r.eax, r.ebx, r.ecx, r.edx]
}
