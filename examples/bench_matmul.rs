//! Ad-hoc matmul throughput on the d12 shapes (C = 768), not a test: the numbers depend on the
//! machine and on what else runs on it. Each figure is the best of several runs after a warm-up.
//! Run: `cargo run --release --example bench_matmul [BT] [SHAPE]` (default B*T = 256 and every
//! shape; RAYON_NUM_THREADS sets the threads).
use std::time::Instant;
use train_gpt2_cuda::cpu::matmul::{matmul_backward, matmul_forward};
use train_gpt2_cuda::rng::Rng;

fn main() {
    let bt: usize = std::env::args()
        .nth(1)
        .map_or(256, |s| s.parse().expect("BT must be a number"));
    let only = std::env::args().nth(2);
    let threads = rayon::current_num_threads();
    println!("B*T = {bt}, rayon threads = {threads}");
    let mut rng = Rng::new(1);
    let shapes = [
        ("qkv", 768, 2304),
        ("attproj", 768, 768),
        ("fc", 768, 3072),
        ("fcproj", 3072, 768),
        ("classifier", 768, 50304),
    ];
    let (mut tf, mut tb, mut total_flop) = (0.0, 0.0, 0.0);
    for (name, c, oc) in shapes {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut v = |n: usize| {
            let mut x = vec![0.0f32; n];
            rng.fill_normal(&mut x, 0.02);
            x
        };
        let (inp, weight, bias, dout) = (v(bt * c), v(oc * c), v(oc), v(bt * oc));
        let mut out = vec![0.0f32; bt * oc];
        let mut dinp = vec![0.0f32; bt * c];
        let mut dweight = vec![0.0f32; oc * c];
        let mut dbias = vec![0.0f32; oc];
        let flop = 2.0 * bt as f64 * c as f64 * oc as f64;
        let reps = ((2e10 / flop) as usize).clamp(3, 50);
        let best = |f: &mut dyn FnMut()| {
            f();
            (0..reps)
                .map(|_| {
                    let t0 = Instant::now();
                    f();
                    t0.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let f = best(&mut || matmul_forward(&mut out, &inp, &weight, Some(&bias), 1, bt, c, oc));
        let bw = best(&mut || {
            matmul_backward(
                &mut dinp,
                &mut dweight,
                Some(&mut dbias),
                &dout,
                &inp,
                &weight,
                1,
                bt,
                c,
                oc,
            )
        });
        println!(
            "{name:>10} C={c:5} OC={oc:6}: forward {:7.2} ms {:6.1} GFLOP/s | backward {:7.2} ms {:6.1} GFLOP/s",
            f * 1e3,
            flop / f / 1e9,
            bw * 1e3,
            2.0 * flop / bw / 1e9
        );
        let layers = if name == "classifier" { 1.0 } else { 12.0 };
        tf += layers * f;
        tb += layers * bw;
        total_flop += layers * 3.0 * flop;
    }
    println!(
        "d12 matmuls per step (12 layers + classifier): forward {:.0} ms, backward {:.0} ms, {:.1} GFLOP/s overall",
        tf * 1e3,
        tb * 1e3,
        total_flop / (tf + tb) / 1e9
    );
}
