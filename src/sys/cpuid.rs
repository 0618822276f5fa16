//! The CPUID instruction: what this CPU says it can do (for `cpuinfo.img` and `--cpu-cap`).

/// CPUID leaf `leaf`, sub-leaf `sub`: `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads (the intrinsic is `unsafe` on
    // some toolchains and safe on others).
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, sub) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// XCR0: the XSAVE components the kernel enabled for user space (None without OSXSAVE).
/// Read once: in a VM CPUID always exits to the hypervisor, and a restore asks for every
/// thread (1000 threads: 1000 exits, about 2 % of such a restore's CPU time).
pub fn xcr0() -> Option<u64> {
    static XCR0: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *XCR0.get_or_init(|| {
        if cpuid(1, 0)[2] & (1 << 27) == 0 {
            return None;
        }
        // SAFETY: OSXSAVE (checked above) means XGETBV is available and XCR0 readable.
        Some(unsafe { xgetbv0() })
    })
}

#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: the caller checked OSXSAVE.
    unsafe {
        core::arch::x86_64::_xgetbv(0)
    }
}
