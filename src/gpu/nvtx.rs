//! NVTX ranges: named spans of host time that Nsight Systems (`nsys profile train-gpt2-cuda ...`)
//! shows on its timeline above the kernels they launched. The engine opens one per step phase
//! (forward, backward, update), per layer ("layer 3") and per kernel-family call ("matmul",
//! "layernorm", ...: `profile::Family::label`), nested in that order.
//!
//! NVTX 3 is header-only; build.rs compiles `kernels/nvtx_shim.c` over it and sets `has_nvtx` when
//! the headers are found (see build.rs). Without them [`range`] does nothing at all. With them and
//! no tool attached, a range costs two indirect calls to empty functions: NVTX looks for a tool
//! once, at the first call, and otherwise does nothing, so the engine runs unchanged. Names are
//! `&'static CStr`s, so opening a range allocates nothing.

use std::ffi::CStr;
use std::marker::PhantomData;

/// Whether this build has NVTX (the headers were found when it was built).
pub const ENABLED: bool = cfg!(has_nvtx);

#[cfg(has_nvtx)]
extern "C" {
    /// kernels/nvtx_shim.c: nvtxRangePushA(name).
    fn tg_nvtx_push(name: *const std::ffi::c_char);
    /// kernels/nvtx_shim.c: nvtxRangePop().
    fn tg_nvtx_pop();
}

/// Whether an NVTX tool (Nsight Systems, or another profiler) is attached to this process: NVTX
/// loads the tool named by `NVTX_INJECTION64_PATH`, which `nsys profile` sets.
pub fn tool_attached() -> bool {
    std::env::var_os("NVTX_INJECTION64_PATH").is_some_and(|p| !p.is_empty())
}

/// An open NVTX range; dropping it closes the range. NVTX ranges belong to the thread that opened
/// them, so the guard cannot move to another thread.
#[must_use = "the range closes as soon as the guard is dropped"]
#[derive(Debug)]
pub struct Range {
    _same_thread: PhantomData<*const ()>,
}

/// Opens the range `name` on this thread until the returned guard is dropped.
#[inline]
pub fn range(name: &'static CStr) -> Range {
    #[cfg(has_nvtx)]
    // SAFETY: `name` is NUL-terminated and lives for the whole program; the shim only hands it to
    // nvtxRangePushA, which reads it (a tool copies what it keeps).
    unsafe {
        tg_nvtx_push(name.as_ptr())
    };
    #[cfg(not(has_nvtx))]
    let _ = name;
    Range {
        _same_thread: PhantomData,
    }
}

impl Drop for Range {
    #[inline]
    fn drop(&mut self) {
        #[cfg(has_nvtx)]
        // SAFETY: closes the range this guard opened, on the thread that opened it (the guard is
        // not Send); ranges close in reverse order because guards drop in reverse order.
        unsafe {
            tg_nvtx_pop()
        };
    }
}

/// Layers with their own range name: "layer 0" to "layer 255"; deeper layers share "layer".
pub const NAMED_LAYERS: usize = 256;

/// "layer N\0" for N < [`NAMED_LAYERS`], each in 10 bytes (zero-padded), built at compile time.
static LAYER_NAMES: [[u8; 10]; NAMED_LAYERS] = layer_names();

const fn layer_names() -> [[u8; 10]; NAMED_LAYERS] {
    let mut out = [[0u8; 10]; NAMED_LAYERS];
    let prefix = b"layer ";
    let mut l = 0;
    while l < NAMED_LAYERS {
        let mut i = 0;
        while i < prefix.len() {
            out[l][i] = prefix[i];
            i += 1;
        }
        // the decimal digits of l, most significant first
        let digits = if l >= 100 {
            3
        } else if l >= 10 {
            2
        } else {
            1
        };
        let mut d = 0;
        let mut rest = l;
        while d < digits {
            out[l][prefix.len() + digits - 1 - d] = b'0' + (rest % 10) as u8;
            rest /= 10;
            d += 1;
        }
        l += 1;
    }
    out
}

/// The range name of layer `l`: "layer 3"; "layer" from [`NAMED_LAYERS`] on.
pub fn layer_name(l: usize) -> &'static CStr {
    match LAYER_NAMES.get(l) {
        Some(bytes) => CStr::from_bytes_until_nul(bytes).unwrap_or(c"layer"),
        None => c"layer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_are_decimal() {
        assert_eq!(layer_name(0), c"layer 0");
        assert_eq!(layer_name(7), c"layer 7");
        assert_eq!(layer_name(10), c"layer 10");
        assert_eq!(layer_name(47), c"layer 47");
        assert_eq!(layer_name(100), c"layer 100");
        assert_eq!(layer_name(255), c"layer 255");
        assert_eq!(layer_name(256), c"layer");
        for l in 0..NAMED_LAYERS {
            assert_eq!(layer_name(l).to_str().unwrap(), format!("layer {l}"));
        }
    }
}
