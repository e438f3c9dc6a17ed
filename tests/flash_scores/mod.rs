//! The scores of the flash attention tests, shared by the emulated ones
//! (tests/emulated_kernels.rs) and their GPU twins (tests/gpu_flash_attention.rs)
//! (`mod flash_scores;` in each), so that both try the same rows with the same bound.

/// q.k of queries and keys in [-1.5, 1.5), or far from 0, where the forward's running maximum is
/// what keeps exp finite (a maximum off by more than about 88, and exp overflows or every term
/// underflows). Far from 0 the tests check the forward alone: the backward reads lse and keeps no
/// running maximum, and scores in the hundreds or thousands carry as many times the rounding that
/// its tolerances are for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scores {
    /// within a few units of 0, where any maximum near 0 would do
    Usual,
    /// the queries at positions 8 to 15 of every 16 multiplied by this: a warp's two rows of a
    /// fragment (w0 + g and w0 + g + 8) then have maxima hundreds apart, so each row's running
    /// maximum must be its own
    Sharp(f32),
    /// every query element raised by this and every key element lowered by it: every score near
    /// -HS x^2 (softmax ignores a row's offset), so the running maximum must start below them all
    /// (at -inf; started at 0, every term underflows)
    FarBelowZero(f32),
}

/// fp32 out's tolerance (atol, rtol) against the CPU twin at scores far from 0, for the usual
/// scores' (1e-5, 1e-5). A score is rounded relative to its size (near 1 to 6e-8, near 200 to
/// 1.5e-5, near -16 HS = -2048 at HS 128 to 2.4e-4), and the probabilities inherit that, scaled
/// by 1/sqrt(HS). Emulated, when this was written: 1.1e-5 at most at `Sharp(100)`, 5.2e-5 at
/// `FarBelowZero(4)`.
pub const FAR_FP32_OUT: (f32, f32) = (1e-4, 1e-4);

impl Scores {
    /// Moves qkv (tokens of 3 c: q, k, v; t positions a sequence), drawn in [-1.5, 1.5), to these
    /// scores.
    pub fn apply(self, qkv: &mut [f32], t: usize, c: usize) {
        for (bt, token) in qkv.chunks_exact_mut(3 * c).enumerate() {
            let (q, kv) = token.split_at_mut(c);
            match self {
                Scores::Usual => {}
                Scores::Sharp(x) => {
                    if bt % t % 16 >= 8 {
                        q.iter_mut().for_each(|q| *q *= x);
                    }
                }
                Scores::FarBelowZero(x) => {
                    q.iter_mut().for_each(|q| *q += x);
                    kv[..c].iter_mut().for_each(|k| *k -= x);
                }
            }
        }
    }
}
