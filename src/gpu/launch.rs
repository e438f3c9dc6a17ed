//! The launch geometry of the hand-written kernels: grid, block and shared memory for each launch,
//! and the host-side layouts some kernels take (the encoder's token buckets). The launchers in this
//! folder use these functions, and so does the host emulation of the kernels
//! (`tests/emulated_kernels.rs`), which must launch every kernel exactly as the launchers do. Plain
//! numbers, no CUDA types: compiled in every build, with or without the kernels.

/// Threads per block of the elementwise and per-channel kernels.
pub const BLOCK: u32 = 256;
/// Rows per block of the warp-per-row kernels (layernorm, the attention softmax, flash attention's
/// D = rowsum(dout * out)).
pub const WARP_ROWS_PER_BLOCK: usize = BLOCK as usize / 32;
/// Threads per row of the fused classifier (one block per row).
pub const CLASSIFIER_THREADS: u32 = 1024;
/// Blocks of the global norm's first stage: FIXED (not derived from the GPU) so that the sum's
/// order, and thus the result, is the same on every device.
pub const NORM_BLOCKS: usize = 512;
/// Threads per block of both global-norm stages.
pub const NORM_THREADS: u32 = 512;
/// Queries (or keys) per block of the fused flash attention kernels, 16 per warp (`BLOCK_ROWS` in
/// `kernels/flash_attention.cu`).
pub const FLASH_BLOCK_ROWS: usize = 64;
/// Threads per block of the fused flash attention kernels (4 warps).
pub const FLASH_THREADS: u32 = 128;
/// Most dynamic shared memory a block may use without opting in (48 KiB on every GPU since sm_70).
pub const MAX_DEFAULT_SHARED: usize = 48 * 1024;

/// One launch's geometry: grid and block dimensions and dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// `blocks` x `y` blocks of `threads` threads, no dynamic shared memory.
pub fn grid_2d(blocks: usize, y: usize, threads: u32) -> Grid {
    Grid {
        grid: (blocks as u32, y as u32, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    }
}

/// A one-dimensional launch of `blocks` blocks of `threads` threads.
pub fn grid_1d(blocks: usize, threads: u32) -> Grid {
    grid_2d(blocks, 1, threads)
}

/// A launch of `n` work items in blocks of [`BLOCK`] threads for grid-stride kernels: enough blocks
/// to cover `n`, capped (the loop covers the rest), at least one.
pub fn grid_stride(n: usize) -> Grid {
    const MAX_BLOCKS: usize = 1 << 16;
    grid_1d(n.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS), BLOCK)
}

/// One thread per element of `n` (blocks of [`BLOCK`]; the kernel checks the bound).
pub fn per_element(n: usize) -> Grid {
    grid_1d(n.div_ceil(BLOCK as usize), BLOCK)
}

/// One warp per row of `rows` rows, [`WARP_ROWS_PER_BLOCK`] rows per block of [`BLOCK`] threads.
pub fn warp_per_row(rows: usize) -> Grid {
    grid_1d(rows.div_ceil(WARP_ROWS_PER_BLOCK), BLOCK)
}

/// Elements of T in one 16-byte pack (the kernels' packed path).
pub fn pack<T>() -> usize {
    16 / std::mem::size_of::<T>()
}

/// Rows per chunk of the deterministic column reductions (layernorm's parameter gradients, the
/// bias gradient): each (chunk, column) thread sums this many rows; grows only when N would need
/// more than 65535 chunks (the grid's y limit).
pub fn rows_per_chunk(n: usize) -> usize {
    64usize.max(n.div_ceil(65535))
}

/// The first stage of a column reduction over `n` rows of `cols` columns: (the launch, the number
/// of chunks, rows per chunk); one thread per (column, chunk), grid (ceil(cols / BLOCK), chunks).
pub fn column_chunks(cols: usize, n: usize) -> (Grid, usize, usize) {
    let rpc = rows_per_chunk(n);
    let chunks = n.div_ceil(rpc);
    (
        grid_2d(cols.div_ceil(BLOCK as usize), chunks, BLOCK),
        chunks,
        rpc,
    )
}

/// layernorm_backward_params_partial over `n` rows of `c` channels of T: (the launch, the number of
/// chunks, rows per chunk). Scalar (`packed` false): [`column_chunks`], one thread per (channel,
/// chunk). Packed (`packed` true, which needs `c` a multiple of the pack: see [`rows_packable`]):
/// one thread per (pack of [`pack::<T>()`] channels, chunk), the same chunks; blocks of the packs
/// rounded up to a warp, at most [`BLOCK`] threads (C = 768 in bf16: 96 packs, one block of 96),
/// grid (ceil(packs / threads), chunks).
pub fn layernorm_params_partial<T>(c: usize, n: usize, packed: bool) -> (Grid, usize, usize) {
    let (scalar, chunks, rpc) = column_chunks(c, n);
    if !packed {
        return (scalar, chunks, rpc);
    }
    debug_assert!(
        c.is_multiple_of(pack::<T>()),
        "C = {c} is not a multiple of the pack"
    );
    let packs = c / pack::<T>();
    let threads = packs.next_multiple_of(32).clamp(32, BLOCK as usize);
    (
        grid_2d(packs.div_ceil(threads), chunks, threads as u32),
        chunks,
        rpc,
    )
}

/// encoder_backward_wte: one thread per (bucket, channel), grid (buckets, ceil(C / BLOCK)).
pub fn encoder_wte(num_buckets: usize, c: usize) -> Grid {
    grid_2d(num_buckets, c.div_ceil(BLOCK as usize), BLOCK)
}

/// The length of [`token_buckets`] of `bt` tokens.
pub fn buckets_len(bt: usize) -> usize {
    3 * bt + 1
}

/// The positions of `inp` grouped by token, laid out for encoder_backward_wte:
/// `[tokens (nb) | starts (nb + 1) | positions (B*T)]` with nb = B*T, buckets in ascending token
/// order and the positions ascending within each bucket. The distinct tokens fill the first
/// buckets; the rest are empty padding (token 0, start = end = B*T), which the kernel skips, so
/// that the layout and the launch depend on B*T only (one CUDA graph for every batch).
pub fn token_buckets(inp: &[u32]) -> Vec<u32> {
    let n = inp.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Stable: equal tokens keep their ascending positions.
    order.sort_by_key(|&i| inp[i as usize]);
    let mut tokens = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n + 1);
    for (j, &i) in order.iter().enumerate() {
        let tok = inp[i as usize];
        if tokens.last() != Some(&tok) {
            tokens.push(tok);
            starts.push(j as u32);
        }
    }
    tokens.resize(n, 0);
    starts.resize(n + 1, n as u32);
    let mut out = tokens;
    out.extend_from_slice(&starts);
    out.extend_from_slice(&order);
    debug_assert_eq!(out.len(), buckets_len(n));
    out
}

/// The fused classifier: one block of [`CLASSIFIER_THREADS`] per row.
pub fn classifier(rows: usize) -> Grid {
    grid_1d(rows, CLASSIFIER_THREADS)
}

/// The fused residual + layernorm's shape for rows of `c` channels: (rows per block, dynamic shared
/// memory bytes, cache_row). Keeps each warp's row in shared memory (one float per channel) with as
/// many warps per block as fit in 48 KiB, up to BLOCK / 32; when even one row does not fit
/// (C > 12288), no cache: the kernel re-reads the row it wrote from residual_out.
pub fn residual_layernorm_shape(c: usize) -> (usize, usize, bool) {
    let max_rows = WARP_ROWS_PER_BLOCK;
    let row_bytes = c * std::mem::size_of::<f32>();
    if row_bytes == 0 || row_bytes > MAX_DEFAULT_SHARED {
        return (max_rows, 0, false);
    }
    let rows = (MAX_DEFAULT_SHARED / row_bytes).min(max_rows);
    (rows, rows * row_bytes, true)
}

/// Whether rows of `c` elements of T in buffers at the addresses `ptrs` can be read and written
/// 16 bytes at a time (the fused residual + layernorm's `vec`, layernorm_backward_params_partial's
/// `packed`): C a multiple of the pack and every buffer 16-byte aligned.
pub fn rows_packable<T>(c: usize, ptrs: &[u64]) -> bool {
    c.is_multiple_of(pack::<T>()) && ptrs.iter().all(|&p| p.is_multiple_of(16))
}

/// The fused residual + layernorm's launch for `n` rows of `c` channels, and its cache_row flag.
pub fn residual_layernorm(n: usize, c: usize) -> (Grid, bool) {
    let (rows_per_block, shared, cache_row) = residual_layernorm_shape(c);
    let g = Grid {
        grid: (n.div_ceil(rows_per_block) as u32, 1, 1),
        block: (rows_per_block as u32 * 32, 1, 1),
        shared_bytes: shared as u32,
    };
    (g, cache_row)
}

/// The fused flash attention kernels of 16 queries (or keys) a warp (forward, dK dV, dQ): grid
/// (ceil(T/64), NH, B) of [`FLASH_THREADS`].
pub fn flash(b: usize, t: usize, nh: usize) -> Grid {
    flash_with(b, t, nh, FlashQueries::Q16)
}

/// Queries a warp of the flash attention forward and dQ kernels for bf16 at HS 64 (GPT-2's case;
/// the others have 16): 16 (64 a block: `flash_attention_forward_hs64_bf16`,
/// `flash_attention_backward_dq_hs64_bf16`) or 32 (128 a block, each K or V fragment feeding two
/// products: the `_q32` kernels). Q32 is the default; [`FlashQueries::ENV`] chooses, so that a GPU
/// session can time both. The dK dV kernel always has 16 keys a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashQueries {
    Q16,
    Q32,
}

impl FlashQueries {
    /// The environment variable that chooses: `16` or `32` (unset or empty: 32).
    pub const ENV: &'static str = "TRAIN_GPT2_FLASH_QUERIES";

    /// Queries per block (`ROWS` of `FwdConfig` and `DqConfig` in kernels/flash_attention.cu).
    pub fn rows_per_block(self) -> usize {
        match self {
            FlashQueries::Q16 => FLASH_BLOCK_ROWS,
            FlashQueries::Q32 => 2 * FLASH_BLOCK_ROWS,
        }
    }

    /// Queries a warp: 16 or 32.
    pub fn per_warp(self) -> usize {
        self.rows_per_block() / (FLASH_THREADS as usize / 32)
    }

    /// The choice [`FlashQueries::ENV`]'s value names (None: unset or empty), or a message.
    pub fn parse(value: Option<&str>) -> Result<FlashQueries, String> {
        match value.map(str::trim) {
            None | Some("") | Some("32") => Ok(FlashQueries::Q32),
            Some("16") => Ok(FlashQueries::Q16),
            Some(v) => Err(format!(
                "{}={v:?}: the flash attention kernels' queries a warp are 16 or 32",
                FlashQueries::ENV
            )),
        }
    }
}

/// The flash attention forward or dQ kernel of `q` queries a warp: grid (ceil(T/rows), NH, B) of
/// [`FLASH_THREADS`], rows = [`FlashQueries::rows_per_block`].
pub fn flash_with(b: usize, t: usize, nh: usize, q: FlashQueries) -> Grid {
    Grid {
        grid: (t.div_ceil(q.rows_per_block()) as u32, nh as u32, b as u32),
        block: (FLASH_THREADS, 1, 1),
        shared_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_group_positions_by_token_in_order() {
        // tokens:          pos 0  1  2  3  4  5
        let b = token_buckets(&[7, 3, 7, 9, 3, 7]);
        // 3 buckets: tokens 3, 7, 9; starts 0, 2, 5, 6; positions [1 4 | 0 2 5 | 3]; then 3
        // empty buckets of padding (token 0, start = end = 6).
        #[rustfmt::skip]
        let want = vec![
            3, 7, 9, 0, 0, 0,
            0, 2, 5, 6, 6, 6, 6,
            1, 4, 0, 2, 5, 3,
        ];
        assert_eq!(b, want);
        assert_eq!(b.len(), buckets_len(6));
        assert_eq!(token_buckets(&[]), vec![0]);
        // one distinct token: one bucket of every position, the rest padding
        assert_eq!(token_buckets(&[5, 5]), vec![5, 0, 0, 2, 2, 0, 1]);
    }

    #[test]
    fn layernorm_params_partial_covers_every_pack() {
        // scalar: one thread per channel, as column_chunks
        let (g, chunks, rpc) = layernorm_params_partial::<u16>(100, 130, false);
        assert_eq!((g, chunks, rpc), column_chunks(100, 130));
        // GPT-2 small in bf16: 96 packs of 8, one block of 96; 3 chunks of 64 rows
        let (g, chunks, rpc) = layernorm_params_partial::<u16>(768, 130, true);
        assert_eq!(
            (g.grid, g.block, chunks, rpc),
            ((1, 3, 1), (96, 1, 1), 3, 64)
        );
        // fp32: 192 packs of 4, one block of 192
        let (g, _, _) = layernorm_params_partial::<f32>(768, 1, true);
        assert_eq!((g.grid, g.block), ((1, 1, 1), (192, 1, 1)));
        // 8 packs: one warp; 1600 bf16 channels: 200 packs; 12296: 1537 packs in 7 blocks of 256
        assert_eq!(layernorm_params_partial::<u16>(64, 1, true).0.block.0, 32);
        assert_eq!(
            layernorm_params_partial::<u16>(1600, 1, true).0.block.0,
            224
        );
        let (g, _, _) = layernorm_params_partial::<u16>(12296, 1, true);
        assert_eq!((g.grid.0, g.block.0), (7, 256));
    }

    #[test]
    fn residual_layernorm_shape_fits_shared_memory() {
        // GPT-2 small: 4 warps of 768 floats would be 12 KiB; 8 fit.
        assert_eq!(residual_layernorm_shape(768), (8, 8 * 768 * 4, true));
        // 1600 floats = 6400 bytes: 7 rows fit in 48 KiB.
        assert_eq!(residual_layernorm_shape(1600), (7, 7 * 6400, true));
        // Exactly one row fits, then none.
        assert_eq!(residual_layernorm_shape(12288), (1, 49152, true));
        assert_eq!(residual_layernorm_shape(12289), (8, 0, false));
    }

    #[test]
    fn flash_queries_and_their_grids() {
        assert_eq!(FlashQueries::parse(None), Ok(FlashQueries::Q32));
        assert_eq!(FlashQueries::parse(Some(" ")), Ok(FlashQueries::Q32));
        assert_eq!(FlashQueries::parse(Some("16")), Ok(FlashQueries::Q16));
        assert_eq!(FlashQueries::parse(Some("32")), Ok(FlashQueries::Q32));
        let e = FlashQueries::parse(Some("64")).unwrap_err();
        assert!(
            e.contains("TRAIN_GPT2_FLASH_QUERIES=\"64\"") && e.contains("16 or 32"),
            "{e}"
        );
        assert_eq!(
            (FlashQueries::Q16.per_warp(), FlashQueries::Q32.per_warp()),
            (16, 32)
        );
        // T = 1024: 16 blocks of 64 queries or 8 of 128; T = 129: 3 or 2 (the last one partial)
        let g = |t, v| flash_with(4, t, 12, v).grid;
        assert_eq!(g(1024, FlashQueries::Q16), (16, 12, 4));
        assert_eq!(g(1024, FlashQueries::Q32), (8, 12, 4));
        assert_eq!(g(129, FlashQueries::Q16), (3, 12, 4));
        assert_eq!(g(129, FlashQueries::Q32), (2, 12, 4));
        assert_eq!(flash(4, 129, 12), flash_with(4, 129, 12, FlashQueries::Q16));
    }
}
