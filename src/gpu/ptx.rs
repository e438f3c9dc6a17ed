//! The kernels' PTX, embedded at build time from `OUT_DIR/<name>.ptx` (build.rs compiles
//! `kernels/<name>.cu`), loaded into the context once by `Gpu::new`.

/// One kernel file's PTX.
#[derive(Clone, Copy, Debug)]
pub struct PtxFile {
    /// The source, relative to the crate root, e.g. `kernels/adamw.cu`.
    pub file: &'static str,
    /// The PTX text nvcc produced from it.
    pub ptx: &'static str,
}

macro_rules! ptx_file {
    ($name:literal) => {
        PtxFile {
            file: concat!("kernels/", $name, ".cu"),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx")),
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
