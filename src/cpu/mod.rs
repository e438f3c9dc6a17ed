//! The CPU reference path: GPT-2 forward and backward in fp32, parallel with rayon. One file per
//! layer family, forward and backward side by side. Backward functions accumulate (`+=`) into their
//! gradient outputs, as llm.c's do. The GPU launchers in `gpu` carry the same names and arguments.
//! `model` composes the layers into GPT-2; `decode` runs it for generation with a key/value cache.

pub mod adamw;
pub mod attention;
pub mod classifier;
pub mod decode;
pub mod encoder;
pub mod flash_attention;
pub mod fused_residual_layernorm;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod residual;

pub mod model;
