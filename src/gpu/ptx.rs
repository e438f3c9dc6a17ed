//! The kernels' PTX, embedded at build time from `OUT_DIR/<name>.ptx.deflate` (build.rs compiles
//! `kernels/<name>.cu` to `<name>.ptx` and deflates it: PTX is verbose text, flash attention's
//! 8 MB alone, and every binary and test executable that can reach the GPU embeds all of it), and
//! inflated when `Gpu::new` loads it into the context.

/// One kernel file's PTX.
#[derive(Clone, Copy, Debug)]
pub struct PtxFile {
    /// The source, relative to the crate root, e.g. `kernels/adamw.cu`.
    pub file: &'static str,
    /// The PTX text nvcc produced from it, deflated (raw deflate, miniz_oxide).
    pub deflated: &'static [u8],
}

impl PtxFile {
    /// The PTX text.
    pub fn text(&self) -> Result<String, String> {
        let bytes = miniz_oxide::inflate::decompress_to_vec(self.deflated)
            .map_err(|e| format!("inflating the embedded PTX of {}: {e:?}", self.file))?;
        String::from_utf8(bytes)
            .map_err(|e| format!("the embedded PTX of {} is not UTF-8: {e}", self.file))
    }
}

macro_rules! ptx_file {
    ($name:literal) => {
        PtxFile {
            file: concat!("kernels/", $name, ".cu"),
            deflated: include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".ptx.deflate")),
        }
    };
}
pub const ADAMW: PtxFile = ptx_file!("adamw");
pub const ATTENTION: PtxFile = ptx_file!("attention");
pub const CLASSIFIER: PtxFile = ptx_file!("classifier");
pub const ENCODER: PtxFile = ptx_file!("encoder");
pub const FLASH_ATTENTION: PtxFile = ptx_file!("flash_attention");
pub const FUSED_RESIDUAL_LAYERNORM: PtxFile = ptx_file!("fused_residual_layernorm");
pub const GELU: PtxFile = ptx_file!("gelu");
pub const GLOBAL_NORM: PtxFile = ptx_file!("global_norm");
pub const LAYERNORM: PtxFile = ptx_file!("layernorm");
pub const MATMUL: PtxFile = ptx_file!("matmul");
pub const RESIDUAL: PtxFile = ptx_file!("residual");

/// Every kernel file, in name order.
pub const ALL: [PtxFile; 11] = [
    ADAMW,
    ATTENTION,
    CLASSIFIER,
    ENCODER,
    FLASH_ATTENTION,
    FUSED_RESIDUAL_LAYERNORM,
    GELU,
    GLOBAL_NORM,
    LAYERNORM,
    MATMUL,
    RESIDUAL,
];
