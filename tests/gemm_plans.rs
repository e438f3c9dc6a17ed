//! The cuBLAS and cuBLASLt products of the GPU launchers, checked on the CPU: each launcher's
//! product descriptions (`gpu::gemm_plan`, the very functions the launchers build their cudarc and
//! cuBLASLt parameters from) are run through a host reference of the libraries' column-major
//! semantics (`tests/gemm_ref`), sequenced as the launcher sequences them, and compared with the
//! CPU twins (`cpu::matmul`, `cpu::attention`, `cpu::gelu`). A wrong transpose, leading dimension,
//! stride, m/n/k, alpha, beta, operand, epilogue or aux leading dimension either addresses memory
//! outside a buffer (the reference refuses the plan) or gives other numbers.
//!
//! Outputs the library overwrites (beta 0) start as NaN, so that a plan reading them fails; those
//! it accumulates into (beta 1) start random, the CPU twin's from the same values.
//!
//! `every_plan_mutation_is_caught` shows that each check can fail: it breaks every product's plan
//! in turn (flipped transposes, leading dimensions, dimensions, strides, alpha, beta, operands,
//! epilogues, aux) and requires the check to notice.
//!
//! Tolerance: |ref - cpu| <= 1e-5 (|cpu| + 1): the reference sums in f64, the twins in fp32 over
//! at most a few hundred terms of magnitude <= 1.

mod gemm_ref;

use gemm_ref::{try_gemm_ref, Buffers};
use train_gpt2_cuda::cpu;
use train_gpt2_cuda::gpu::gemm_plan::{self, Epilogue, GemmPlan, Operand::*};
use train_gpt2_cuda::rng::Rng;

/// Changes a product's plan before it runs (the identity for the real checks, a mutation in
/// `every_plan_mutation_is_caught`); the first argument names the product.
type Mutate<'a> = &'a dyn Fn(&str, GemmPlan) -> GemmPlan;

fn keep(_: &str, p: GemmPlan) -> GemmPlan {
    p
}

fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
}

fn nan(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// Runs product `name`'s plan (after `mutate`) on `bufs`.
fn run(name: &str, plan: GemmPlan, mutate: Mutate, bufs: &mut Buffers) -> Result<(), String> {
    try_gemm_ref(&mutate(name, plan), bufs).map_err(|e| format!("{name}: {e}"))
}

/// |got - want| <= 1e-5 (|want| + 1) everywhere (NaN fails).
fn close(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (w.abs() + 1.0);
        let within = (g - w).abs() <= tol; // false for NaN
        if !within {
            return Err(format!("{what}[{i}]: reference {g} vs cpu {w}"));
        }
    }
    Ok(())
}

/// (B, T, C, OC) of the matmuls, (B, T, C, NH) of attention.
type Sizes = (usize, usize, usize, usize);

/// (B, T, C, OC) with B*T not a multiple of 8, T = 1, C != OC both ways, C = OC.
const MATMUL_SIZES: [Sizes; 5] = [
    (3, 5, 37, 19),
    (1, 1, 16, 24),
    (2, 7, 24, 40),
    (4, 3, 72, 24),
    (2, 9, 33, 33),
];

/// `Gpu::matmul_forward`'s product (the bias is a kernel, checked by the emulation).
fn check_matmul_forward((b, t, c, oc): Sizes, mutate: Mutate) -> Result<(), String> {
    let mut rng = Rng::new(1);
    let bt = b * t;
    let (inp, weight) = (rand(&mut rng, bt * c), rand(&mut rng, oc * c));
    let mut bufs = Buffers::new();
    bufs.set(Inp, inp.clone());
    bufs.set(Weight, weight.clone());
    bufs.set(Out, nan(bt * oc));
    run(
        "forward",
        gemm_plan::matmul_forward(bt, c, oc),
        mutate,
        &mut bufs,
    )?;
    let mut want = vec![0.0; bt * oc];
    cpu::matmul::matmul_forward(&mut want, &inp, &weight, None, b, t, c, oc);
    close("out", bufs.get(Out), &want)
}

/// `Gpu::matmul_backward`'s two products: dinp and dweight accumulate.
fn check_matmul_backward((b, t, c, oc): Sizes, mutate: Mutate) -> Result<(), String> {
    let mut rng = Rng::new(2);
    let bt = b * t;
    let (dout, inp, weight) = (
        rand(&mut rng, bt * oc),
        rand(&mut rng, bt * c),
        rand(&mut rng, oc * c),
    );
    let (dinp0, dweight0) = (rand(&mut rng, bt * c), rand(&mut rng, oc * c));
    let mut bufs = Buffers::new();
    bufs.set(Dout, dout.clone());
    bufs.set(Inp, inp.clone());
    bufs.set(Weight, weight.clone());
    bufs.set(Dinp, dinp0.clone());
    bufs.set(Dweight, dweight0.clone());
    run(
        "dinp",
        gemm_plan::matmul_backward_dinp(bt, c, oc),
        mutate,
        &mut bufs,
    )?;
    run(
        "dweight",
        gemm_plan::matmul_backward_dweight(bt, c, oc),
        mutate,
        &mut bufs,
    )?;
    let (mut dinp, mut dweight) = (dinp0, dweight0);
    cpu::matmul::matmul_backward(
        &mut dinp,
        &mut dweight,
        None,
        &dout,
        &inp,
        &weight,
        b,
        t,
        c,
        oc,
    );
    close("dinp", bufs.get(Dinp), &dinp)?;
    close("dweight", bufs.get(Dweight), &dweight)
}

/// (B, T, C, NH): T = 1, NH = 1, HS not a power of two, HS > T and HS < T.
const ATTENTION_SIZES: [Sizes; 5] = [
    (2, 7, 12, 3),
    (1, 1, 8, 2),
    (3, 5, 6, 1),
    (2, 9, 20, 4),
    (1, 12, 16, 8),
];

/// q, k, v (B,NH,T,HS) from inp (B,T,3C), as `attention_permute` in kernels/attention.cu.
fn permute(inp: &[f32], b: usize, t: usize, c: usize, nh: usize) -> [Vec<f32>; 3] {
    let hs = c / nh;
    let mut qkv = [
        vec![0.0; b * t * c],
        vec![0.0; b * t * c],
        vec![0.0; b * t * c],
    ];
    for idx in 0..b * t * c {
        let d = idx % hs;
        let ti = (idx / hs) % t;
        let h = (idx / (hs * t)) % nh;
        let bi = idx / (hs * t * nh);
        let src = (bi * t + ti) * 3 * c + h * hs + d;
        for (part, x) in qkv.iter_mut().enumerate() {
            x[idx] = inp[src + part * c];
        }
    }
    qkv
}

/// (B,T,C) position of element idx of a per-head (B,NH,T,HS) tensor, as the (un)permute kernels.
fn unpermuted(idx: usize, t: usize, c: usize, nh: usize) -> usize {
    let hs = c / nh;
    let d = idx % hs;
    let ti = (idx / hs) % t;
    let h = (idx / (hs * t)) % nh;
    let bi = idx / (hs * t * nh);
    (bi * t + ti) * c + h * hs + d
}

/// x (B,NH,T,T) with the entries above each row's diagonal zeroed, as the softmax kernels leave
/// preatt and datt.
fn causal(x: &[f32], t: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    for (row, r) in y.chunks_mut(t).enumerate() {
        r[row % t + 1..].fill(0.0);
    }
    y
}

/// `Gpu::attention_forward`: the permute, preatt = scale q k^T, the softmax (the CPU twin's att:
/// its own check is the emulation's), y = att v, the unpermute. y goes into q's scratch, so q is
/// retired before that product.
fn check_attention_forward((b, t, c, nh): Sizes, mutate: Mutate) -> Result<(), String> {
    let mut rng = Rng::new(3);
    let (btc, btt) = (b * t * c, b * nh * t * t);
    let inp = rand(&mut rng, 3 * btc);
    let (mut out, mut preatt, mut att) = (vec![0.0; btc], vec![0.0; btt], vec![0.0; btt]);
    cpu::attention::attention_forward(&mut out, &mut preatt, &mut att, &inp, b, t, c, nh);

    let (preatt_plan, y_plan) = gemm_plan::attention_forward(b, t, c, nh);
    let [q, k, v] = permute(&inp, b, t, c, nh);
    let mut bufs = Buffers::new();
    bufs.set(Q, q);
    bufs.set(K, k);
    bufs.set(V, v);
    bufs.set(Preatt, nan(btt));
    run("preatt", preatt_plan, mutate, &mut bufs)?;
    close("preatt", &causal(bufs.get(Preatt), t), &preatt)?;
    bufs.set(Att, att);
    bufs.retire(Q);
    bufs.set(Y, nan(btc));
    run("y", y_plan, mutate, &mut bufs)?;
    let mut got = vec![f32::NAN; btc];
    for (idx, &y) in bufs.get(Y).iter().enumerate() {
        got[unpermuted(idx, t, c, nh)] = y;
    }
    close("out", &got, &out)
}

/// `Gpu::attention_backward`: dy from dout, datt = dy v^T, dv = att^T dy (into v's scratch),
/// the softmax backward (the CPU twin's dpreatt), dq = scale dpreatt k (into dy's scratch),
/// dk = scale dpreatt^T q, then dinp += dq | dk | dv.
fn check_attention_backward((b, t, c, nh): Sizes, mutate: Mutate) -> Result<(), String> {
    let mut rng = Rng::new(4);
    let (btc, btt) = (b * t * c, b * nh * t * t);
    let inp = rand(&mut rng, 3 * btc);
    let dout = rand(&mut rng, btc);
    let dinp0 = rand(&mut rng, 3 * btc);
    let (mut out, mut preatt, mut att) = (vec![0.0; btc], vec![0.0; btt], vec![0.0; btt]);
    cpu::attention::attention_forward(&mut out, &mut preatt, &mut att, &inp, b, t, c, nh);
    let (mut dinp, mut dpreatt, mut datt) = (dinp0.clone(), nan(btt), nan(btt));
    cpu::attention::attention_backward(
        &mut dinp,
        &mut dpreatt,
        &mut datt,
        &dout,
        &inp,
        &att,
        b,
        t,
        c,
        nh,
    );

    let [datt_plan, dv_plan, dq_plan, dk_plan] = gemm_plan::attention_backward(b, t, c, nh);
    let [q, k, v] = permute(&inp, b, t, c, nh);
    let mut dy = vec![0.0; btc];
    for (idx, x) in dy.iter_mut().enumerate() {
        *x = dout[unpermuted(idx, t, c, nh)];
    }
    let mut bufs = Buffers::new();
    bufs.set(Q, q);
    bufs.set(K, k);
    bufs.set(V, v);
    bufs.set(Dy, dy);
    bufs.set(Att, att);
    bufs.set(Datt, nan(btt));
    run("datt", datt_plan, mutate, &mut bufs)?;
    close("datt", &causal(bufs.get(Datt), t), &datt)?;
    bufs.retire(V);
    bufs.set(Dv, nan(btc));
    run("dv", dv_plan, mutate, &mut bufs)?;
    bufs.set(Dpreatt, dpreatt);
    bufs.retire(Dy);
    bufs.set(Dq, nan(btc));
    run("dq", dq_plan, mutate, &mut bufs)?;
    bufs.set(Dk, nan(btc));
    run("dk", dk_plan, mutate, &mut bufs)?;
    let mut got = dinp0;
    for (part, op) in [Dq, Dk, Dv].into_iter().enumerate() {
        for (idx, &g) in bufs.get(op).iter().enumerate() {
            let (row, ch) = (unpermuted(idx, t, c, nh) / c, idx % (c / nh));
            let h = (idx / (c / nh * t)) % nh;
            got[row * 3 * c + part * c + h * (c / nh) + ch] += g;
        }
    }
    close("dinp", &got, &dinp)
}

/// (B, T, C, OC) for cuBLASLt: the GELU aux leading dimension (OC forward, C backward) must be a
/// multiple of 8, so C and OC are; B*T is not.
const LT_SIZES: [Sizes; 4] = [
    (3, 5, 24, 40),
    (1, 1, 16, 8),
    (2, 7, 64, 24),
    (2, 3, 32, 32),
];

/// `matmul_forward_lt` (with or without a bias) and `matmul_forward_gelu_lt` (`gelu`): out and,
/// with GELU, pre_gelu, against `cpu::matmul_forward` and `cpu::gelu_forward`.
fn check_lt_forward(
    (b, t, c, oc): Sizes,
    bias: bool,
    gelu: bool,
    mutate: Mutate,
) -> Result<(), String> {
    let mut rng = Rng::new(5);
    let bt = b * t;
    let (inp, weight, bias_v) = (
        rand(&mut rng, bt * c),
        rand(&mut rng, oc * c),
        rand(&mut rng, oc),
    );
    let mut bufs = Buffers::new();
    bufs.set(Inp, inp.clone());
    bufs.set(Weight, weight.clone());
    bufs.set(Bias, bias_v.clone());
    bufs.set(Out, nan(bt * oc));
    bufs.set(PreGelu, nan(bt * oc));
    run(
        "forward_lt",
        gemm_plan::lt_forward(bt, c, oc, bias, gelu),
        mutate,
        &mut bufs,
    )?;
    let mut pre = vec![0.0; bt * oc];
    let bias_arg = bias.then_some(bias_v.as_slice());
    cpu::matmul::matmul_forward(&mut pre, &inp, &weight, bias_arg, b, t, c, oc);
    if gelu {
        close("pre_gelu", bufs.get(PreGelu), &pre)?;
        let mut out = vec![0.0; bt * oc];
        cpu::gelu::gelu_forward(&mut out, &pre);
        close("out_gelu", bufs.get(Out), &out)
    } else {
        close("out", bufs.get(Out), &pre)
    }
}

/// `matmul_backward_lt` (`accumulate` or not) and `matmul_backward_dgelu_lt` (`dgelu`): dinp (or
/// dpre = (dout . weight) * gelu'(pre_gelu), overwritten), dweight and dbias (the product with
/// ones) accumulating, against `cpu::matmul_backward` and `cpu::gelu_backward`.
fn check_lt_backward(
    (b, t, c, oc): Sizes,
    accumulate: bool,
    dgelu: bool,
    mutate: Mutate,
) -> Result<(), String> {
    let mut rng = Rng::new(6);
    let bt = b * t;
    let (dout, inp, weight, pre) = (
        rand(&mut rng, bt * oc),
        rand(&mut rng, bt * c),
        rand(&mut rng, oc * c),
        rand(&mut rng, bt * c)
            .iter()
            .map(|x| 3.0 * x)
            .collect::<Vec<_>>(),
    );
    let (dinp0, dweight0, dbias0) = (
        rand(&mut rng, bt * c),
        rand(&mut rng, oc * c),
        rand(&mut rng, oc),
    );
    let overwrite = dgelu || !accumulate;
    let mut bufs = Buffers::new();
    bufs.set(Dout, dout.clone());
    bufs.set(Inp, inp.clone());
    bufs.set(Weight, weight.clone());
    bufs.set(PreGelu, pre.clone());
    bufs.set(Ones, vec![1.0; bt]);
    bufs.set(
        Dinp,
        if overwrite {
            nan(bt * c)
        } else {
            dinp0.clone()
        },
    );
    bufs.set(Dweight, dweight0.clone());
    bufs.set(Dbias, dbias0.clone());
    let dinp_plan = gemm_plan::lt_dinp(bt, c, oc, accumulate, dgelu);
    run("dinp_lt", dinp_plan, mutate, &mut bufs)?;
    let dweight_plan = gemm_plan::matmul_backward_dweight(bt, c, oc);
    run("dweight_lt", dweight_plan, mutate, &mut bufs)?;
    run("dbias_lt", gemm_plan::lt_dbias(bt, oc), mutate, &mut bufs)?;

    let mut dinp = if overwrite { vec![0.0; bt * c] } else { dinp0 };
    let (mut dweight, mut dbias) = (dweight0, dbias0);
    cpu::matmul::matmul_backward(
        &mut dinp,
        &mut dweight,
        Some(&mut dbias),
        &dout,
        &inp,
        &weight,
        b,
        t,
        c,
        oc,
    );
    if dgelu {
        let mut dpre = vec![0.0; bt * c];
        cpu::gelu::gelu_backward(&mut dpre, &pre, &dinp);
        close("dpre", bufs.get(Dinp), &dpre)?;
    } else {
        close("dinp", bufs.get(Dinp), &dinp)?;
    }
    close("dweight", bufs.get(Dweight), &dweight)?;
    close("dbias", bufs.get(Dbias), &dbias)
}

#[test]
fn matmul_plans_match_the_cpu() {
    for s in MATMUL_SIZES {
        check_matmul_forward(s, &keep).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        check_matmul_backward(s, &keep).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
}

#[test]
fn attention_plans_match_the_cpu() {
    for s in ATTENTION_SIZES {
        check_attention_forward(s, &keep).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        check_attention_backward(s, &keep).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
}

#[test]
fn lt_plans_match_the_cpu() {
    for s in LT_SIZES {
        for (bias, gelu) in [(false, false), (true, false), (true, true)] {
            check_lt_forward(s, bias, gelu, &keep)
                .unwrap_or_else(|e| panic!("{s:?} bias {bias} gelu {gelu}: {e}"));
        }
        for (accumulate, dgelu) in [(false, false), (true, false), (false, true), (true, true)] {
            check_lt_backward(s, accumulate, dgelu, &keep)
                .unwrap_or_else(|e| panic!("{s:?} accumulate {accumulate} dgelu {dgelu}: {e}"));
        }
    }
}

/// A change to a plan (where it changes nothing, e.g. swapping equal dimensions, it does not
/// apply).
type Mutation = (&'static str, fn(&mut GemmPlan));

/// The epilogue after `e` (all four in turn, over three mutations).
fn next_epilogue(e: Epilogue, step: usize) -> Epilogue {
    use Epilogue::*;
    let all = [Default, Bias, GeluAuxBias, DGelu];
    let i = all.iter().position(|&x| x == e).expect("listed");
    all[(i + step) % 4]
}

const MUTATIONS: &[Mutation] = &[
    ("flip transa", |p| p.transa = !p.transa),
    ("flip transb", |p| p.transb = !p.transb),
    ("lda + 1", |p| p.lda += 1),
    ("ldb + 1", |p| p.ldb += 1),
    ("ldc + 1", |p| p.ldc += 1),
    ("lda = ldb", |p| p.lda = p.ldb),
    ("swap m, n", |p| std::mem::swap(&mut p.m, &mut p.n)),
    ("swap m, k", |p| std::mem::swap(&mut p.m, &mut p.k)),
    ("swap n, k", |p| std::mem::swap(&mut p.n, &mut p.k)),
    ("m - 1", |p| p.m = p.m.saturating_sub(1).max(1)),
    ("n - 1", |p| p.n = p.n.saturating_sub(1).max(1)),
    ("k - 1", |p| p.k = p.k.saturating_sub(1).max(1)),
    ("alpha * 2", |p| p.alpha *= 2.0),
    ("alpha = 1", |p| p.alpha = 1.0),
    ("beta 0 <-> 1", |p| p.beta = 1.0 - p.beta),
    ("batch - 1", |p| p.batch = p.batch.saturating_sub(1).max(1)),
    ("stride_a - 1", |p| {
        p.stride_a = p.stride_a.saturating_sub(1)
    }),
    ("stride_b - 1", |p| {
        p.stride_b = p.stride_b.saturating_sub(1)
    }),
    ("stride_c + 1 (batched)", |p| {
        p.stride_c += (p.batch > 1) as usize
    }),
    ("stride_a = stride_b", |p| p.stride_a = p.stride_b),
    ("swap A, B", |p| std::mem::swap(&mut p.a, &mut p.b)),
    ("A from C", |p| p.a = p.c),
    ("next epilogue", |p| {
        p.epilogue = next_epilogue(p.epilogue, 1)
    }),
    ("epilogue + 2", |p| {
        p.epilogue = next_epilogue(p.epilogue, 2)
    }),
    ("previous epilogue", |p| {
        p.epilogue = next_epilogue(p.epilogue, 3)
    }),
    ("no bias", |p| p.bias = None),
    ("no aux", |p| p.aux = None),
    ("aux ld + 8", |p| p.aux = p.aux.map(|(op, ld)| (op, ld + 8))),
    ("aux from out", |p| p.aux = p.aux.map(|(_, ld)| (Out, ld))),
];

/// Mutants that cannot change what the library computes, with why.
fn equivalent(product: &str, mutation: &str) -> Option<&'static str> {
    match (product, mutation) {
        // dbias = dout^T . ones has one column (n = 1): ldc and the ones' ldb are never used.
        ("dbias_lt", "ldc + 1" | "ldb + 1") => Some("n = 1: the column stride is never used"),
        _ => None,
    }
}

type Check = Box<dyn Fn(Mutate) -> Result<(), String>>;

/// Every check with its products' names, on sizes where no dimension is 1 or equal to another
/// (so that a swapped or off-by-one dimension is a real change).
fn checks() -> Vec<(String, Vec<&'static str>, Check)> {
    let mut v: Vec<(String, Vec<&'static str>, Check)> = vec![
        (
            "matmul_forward".into(),
            vec!["forward"],
            Box::new(|m| check_matmul_forward((3, 5, 37, 19), m)),
        ),
        (
            "matmul_backward".into(),
            vec!["dinp", "dweight"],
            Box::new(|m| check_matmul_backward((3, 5, 37, 19), m)),
        ),
        (
            "attention_forward".into(),
            vec!["preatt", "y"],
            Box::new(|m| check_attention_forward((2, 7, 12, 3), m)),
        ),
        (
            "attention_backward".into(),
            vec!["datt", "dv", "dq", "dk"],
            Box::new(|m| check_attention_backward((2, 7, 12, 3), m)),
        ),
    ];
    for (bias, gelu) in [(false, false), (true, false), (true, true)] {
        v.push((
            format!("forward_lt bias {bias} gelu {gelu}"),
            vec!["forward_lt"],
            Box::new(move |m| check_lt_forward((3, 5, 24, 40), bias, gelu, m)),
        ));
    }
    for (accumulate, dgelu) in [(false, false), (true, false), (false, true)] {
        v.push((
            format!("backward_lt accumulate {accumulate} dgelu {dgelu}"),
            vec!["dinp_lt", "dweight_lt", "dbias_lt"],
            Box::new(move |m| check_lt_backward((3, 5, 24, 40), accumulate, dgelu, m)),
        ));
    }
    v
}

#[test]
fn every_plan_mutation_is_caught() {
    let (mut caught, mut survivors) = (0, Vec::new());
    for (check, products, run_check) in checks() {
        run_check(&keep).unwrap_or_else(|e| panic!("{check} fails unmutated: {e}"));
        for &product in &products {
            for &(mutation, f) in MUTATIONS {
                let applies = std::cell::Cell::new(false);
                let mutate = |name: &str, p: GemmPlan| {
                    if name != product {
                        return p;
                    }
                    let mut q = p;
                    f(&mut q);
                    applies.set(applies.get() || q != p);
                    q
                };
                let result = run_check(&mutate);
                if !applies.get() {
                    continue;
                }
                match (result, equivalent(product, mutation)) {
                    (Err(_), None) => caught += 1,
                    (Ok(()), Some(_)) => {}
                    (Ok(()), None) => survivors.push(format!("{check}: {product}: {mutation}")),
                    (Err(e), Some(why)) => {
                        panic!("{check}: {product}: {mutation} was listed as equivalent ({why}) but fails: {e}")
                    }
                }
            }
        }
    }
    assert!(
        survivors.is_empty(),
        "{} plan mutations went unnoticed:\n{}",
        survivors.len(),
        survivors.join("\n")
    );
    eprintln!("{caught} plan mutations caught");
}

/// An unbatched, untransposed m x n x k product Out = Weight . Inp, packed (lda = ldc = m,
/// ldb = k), no epilogue: the reference's self-tests change what they need.
fn plain(m: usize, n: usize, k: usize) -> GemmPlan {
    GemmPlan {
        transa: false,
        transb: false,
        m,
        n,
        k,
        lda: m,
        ldb: k,
        ldc: m,
        alpha: 1.0,
        beta: 0.0,
        batch: 1,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        a: Weight,
        b: Inp,
        c: Out,
        epilogue: Epilogue::Default,
        bias: None,
        aux: None,
    }
}

/// The reference itself: a 2 x 3 by 3 x 2 product with each transpose, a batched one, and each
/// way of addressing memory outside a buffer refused with a message.
#[test]
fn the_reference_follows_the_column_major_convention() {
    // Row-major A (2,3) = [1 2 3; 4 5 6] is column-major A^T (3 x 2, ld 3).
    let a = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    // Column-major B (3 x 2, ld 3): columns [1 0 1] and [0 1 1].
    let bm = vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
    let plan = |transa, lda| GemmPlan {
        transa,
        lda,
        ldb: 3,
        ..plain(2, 2, 3)
    };
    let mut bufs = Buffers::new();
    bufs.set(Weight, a.clone());
    bufs.set(Inp, bm.clone());
    bufs.set(Out, nan(4));
    // op_T(A^T: 3 x 2, ld 3) = A (2 x 3): C = A B = [1+3, 2+3; 4+6, 5+6], column-major.
    gemm_ref::gemm_ref(&plan(true, 3), &mut bufs);
    assert_eq!(bufs.get(Out), &[4.0, 10.0, 5.0, 11.0]);
    // Not transposed, the same memory is a 2 x 3 matrix with ld 2: columns [1 2], [3 4], [5 6].
    gemm_ref::gemm_ref(&plan(false, 2), &mut bufs);
    assert_eq!(bufs.get(Out), &[6.0, 8.0, 8.0, 10.0]);
    // beta 1 adds the old C; transb reads B^T.
    let p = GemmPlan {
        beta: 1.0,
        transb: true,
        ldb: 2,
        k: 2,
        n: 3,
        m: 2,
        lda: 2,
        ldc: 2,
        ..plan(false, 2)
    };
    bufs.set(Inp, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    bufs.set(Out, vec![1.0; 6]);
    // transb: B is stored n x k = 3 x 2, so ld 2 is too short: refused.
    let e = try_gemm_ref(&p, &mut bufs).unwrap_err();
    assert_eq!(e, "B (Inp): leading dimension 2 below its 3 rows");
    let p = GemmPlan { ldb: 3, ..p };
    gemm_ref::gemm_ref(&p, &mut bufs);
    // A (2 x 2, ld 2) = [1 3; 2 4]; op(B) (2 x 3) = B^T, B = [1 0; 0 1; 1 1] stored column-major
    // (3 x 2, ld 3) from [1 0 0 | 1 1 1]: B = [1 1; 0 1; 0 1], B^T = [1 0 0; 1 1 1].
    // A B^T = [4 3 3; 6 4 4], plus 1.
    assert_eq!(bufs.get(Out), &[5.0, 7.0, 4.0, 5.0, 4.0, 5.0]);

    // Batched: two 1 x 1 products 3 elements apart.
    let p = GemmPlan {
        m: 1,
        n: 1,
        k: 1,
        lda: 1,
        ldb: 1,
        ldc: 1,
        batch: 2,
        stride_a: 3,
        stride_b: 3,
        stride_c: 1,
        ..plan(false, 1)
    };
    bufs.set(Weight, a);
    bufs.set(Inp, bm);
    bufs.set(Out, nan(2));
    gemm_ref::gemm_ref(&p, &mut bufs);
    assert_eq!(bufs.get(Out), &[1.0, 0.0]);
    let e = try_gemm_ref(&GemmPlan { batch: 3, ..p }, &mut bufs).unwrap_err();
    assert_eq!(
        e,
        "A (Weight): batch 2 of 3 (1 x 1, ld 1, stride 3) reaches element 6, past the end of its \
         6 elements"
    );
    let e = try_gemm_ref(&GemmPlan { stride_c: 0, ..p }, &mut bufs).unwrap_err();
    assert_eq!(
        e,
        "C (Out): batches 0 elements apart overlap (each spans 1)"
    );
    let e = try_gemm_ref(&GemmPlan { c: Weight, ..p }, &mut bufs).unwrap_err();
    assert_eq!(e, "C (Weight) is also an input of the product");
    let e = try_gemm_ref(&GemmPlan { a: Dout, ..p }, &mut bufs).unwrap_err();
    assert_eq!(e, "A is Dout, which holds nothing at this point");
}

/// The epilogues: bias broadcast over columns, GELU with its aux, DGELU reading the aux, and their
/// rules (aux leading dimension a multiple of 8, DGELU with beta 0).
#[test]
fn the_reference_applies_the_epilogues() {
    // D (2 x 3) = A (2 x 1) . B (1 x 3) = outer product, ld 8 for the aux.
    let base = GemmPlan {
        epilogue: Epilogue::Bias,
        bias: Some(Bias),
        ..plain(2, 3, 1)
    };
    let mut bufs = Buffers::new();
    bufs.set(Weight, vec![1.0, 2.0]);
    bufs.set(Inp, vec![1.0, -1.0, 0.5]);
    bufs.set(Bias, vec![10.0, 20.0]);
    bufs.set(Out, nan(6));
    gemm_ref::gemm_ref(&base, &mut bufs);
    assert_eq!(bufs.get(Out), &[11.0, 22.0, 9.0, 18.0, 10.5, 21.0]);

    bufs.set(Bias, vec![0.0, -1.0]);
    bufs.set(PreGelu, nan(8 * 3));
    let gelu = GemmPlan {
        epilogue: Epilogue::GeluAuxBias,
        aux: Some((PreGelu, 8)),
        ..base
    };
    gemm_ref::gemm_ref(&gelu, &mut bufs);
    let pre = [1.0, 1.0, -1.0, -3.0, 0.5, 0.0];
    for (col, pair) in pre.chunks(2).enumerate() {
        for (row, &x) in pair.iter().enumerate() {
            assert_eq!(bufs.get(PreGelu)[row + 8 * col], x);
            let want = gemm_ref::gelu(x as f64) as f32;
            assert_eq!(bufs.get(Out)[row + 2 * col], want);
        }
    }
    assert!(bufs.get(PreGelu)[2].is_nan(), "rows past m are not written");

    let dgelu = GemmPlan {
        epilogue: Epilogue::DGelu,
        bias: None,
        ..gelu
    };
    gemm_ref::gemm_ref(&dgelu, &mut bufs);
    let products: [f64; 6] = [1.0, 2.0, -1.0, -2.0, 0.5, 1.0];
    for (i, (&g, &x)) in products.iter().zip(&pre).enumerate() {
        let want = (g * gemm_ref::gelu_grad(x as f64)) as f32;
        assert_eq!(bufs.get(Out)[i], want, "{i}");
    }
    // gelu' against a central difference.
    for x in [-3.0, -0.7, 0.0, 0.4, 2.5] {
        let h = 1e-6;
        let fd = (gemm_ref::gelu(x + h) - gemm_ref::gelu(x - h)) / (2.0 * h);
        assert!((fd - gemm_ref::gelu_grad(x)).abs() < 1e-8, "{x}");
    }

    let e = try_gemm_ref(
        &GemmPlan {
            aux: Some((PreGelu, 4)),
            ..dgelu
        },
        &mut bufs,
    )
    .unwrap_err();
    assert!(e.contains("not a multiple of 8"), "{e}");
    let e = try_gemm_ref(&GemmPlan { beta: 1.0, ..dgelu }, &mut bufs).unwrap_err();
    assert_eq!(e, "DGELU with beta 1 (must be 0)");
    let e = try_gemm_ref(
        &GemmPlan {
            epilogue: Epilogue::Default,
            ..base
        },
        &mut bufs,
    )
    .unwrap_err();
    assert_eq!(e, "a bias (Bias) that epilogue Default ignores");
    bufs.set(Bias, vec![0.0]);
    let e = try_gemm_ref(&base, &mut bufs).unwrap_err();
    assert_eq!(e, "bias (Bias): 1 elements, the epilogue reads m = 2");
}
