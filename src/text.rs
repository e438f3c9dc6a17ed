//! Numbers in messages, as a person reads them: a count with its noun in the right number ("1
//! batch", "2 batches"), a flag's value as it was typed ("1e-300", not its 300 digits), and a
//! large value in exponent form (a perplexity of "1.702e34").

use std::fmt::{Display, LowerExp};

/// `n` with its noun: `one` when `n` is 1, `many` otherwise ("1 batch", "0 batches", "9159
/// batches").
pub fn count<N: Display + PartialEq + From<u8>>(n: N, one: &str, many: &str) -> String {
    let noun = if n == N::from(1) { one } else { many };
    format!("{n} {noun}")
}

/// A flag's number as a person types it: "0.05", "3", "1e-300", "1e300", "-2.5e-7" (`{}` writes
/// out every digit of 1e-300 and of 1e300): the exponent form below 1e-4 and from 1e9 up, in
/// magnitude; the shortest digits that read back as `x` either way.
pub fn typed<F: Display + LowerExp + Into<f64> + Copy>(x: F) -> String {
    let v: f64 = x.into();
    if v != 0.0 && v.is_finite() && (v.abs() < 1e-4 || v.abs() >= 1e9) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The f64 with the same shortest decimal representation as `x` (0.9f32 -> 0.9f64, where the
/// plain widening gives 0.899999976...): the number the user typed, as Python would hold it, so
/// that f64 arithmetic on a flag's value (AdamW's coefficients, the learning-rate schedule) is
/// PyTorch's on the same flag.
pub fn decimal_f64(x: f32) -> f64 {
    // Display prints the shortest decimal that reads back as the same f32; parsing it as f64
    // cannot fail for a finite value, and non-finite values fall back to the plain widening.
    format!("{x}").parse::<f64>().unwrap_or(x as f64)
}

/// A flag's number, refused where its text names one that `F` cannot hold: beyond its range
/// (it would read as inf) or, not zero, below its smallest (it would read as 0). The checks
/// after parsing then never show a value other than the one typed (`--eps 1e-46` had been
/// refused as "got 0"). clap's `value_parser` for every float flag.
pub fn flag_number<F: std::str::FromStr + Into<f64> + Copy>(s: &str) -> Result<F, String> {
    let x: F = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    let v: f64 = x.into();
    let lower = s.to_ascii_lowercase();
    let kind = std::any::type_name::<F>();
    if v.is_infinite() && !lower.contains("inf") {
        return Err(format!("{s} is beyond the range of this flag's {kind}"));
    }
    let mantissa = lower
        .trim_start_matches(['+', '-'])
        .split('e')
        .next()
        .unwrap_or("");
    if v == 0.0 && mantissa.chars().any(|c| ('1'..='9').contains(&c)) {
        return Err(format!(
            "{s} is too small for this flag's {kind}: it would read as 0"
        ));
    }
    Ok(x)
}

/// `x` with `decimals` decimals, or from 1e6 up (in magnitude) in exponent form with as many
/// ("1.702e34", where the decimals would run to dozens of digits); "inf" and "NaN" as they are.
pub fn magnitude(x: f64, decimals: usize) -> String {
    if x.is_finite() && x.abs() >= 1e6 {
        format!("{x:.decimals$e}")
    } else {
        format!("{x:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_number_that_its_type_cannot_hold_is_refused_as_typed() {
        assert_eq!(flag_number::<f32>("1e-8"), Ok(1e-8));
        assert_eq!(flag_number::<f32>("-0.5"), Ok(-0.5));
        assert_eq!(flag_number::<f32>("0"), Ok(0.0));
        assert_eq!(flag_number::<f32>("0.000e5"), Ok(0.0));
        assert_eq!(flag_number::<f32>("inf"), Ok(f32::INFINITY));
        // f32's smallest subnormal is about 1.4e-45; f64's about 4.9e-324
        assert_eq!(flag_number::<f32>("1e-45").map(|x| x > 0.0), Ok(true));
        assert_eq!(
            flag_number::<f32>("1e-46"),
            Err("1e-46 is too small for this flag's f32: it would read as 0".to_string())
        );
        assert_eq!(
            flag_number::<f64>("-1e-400"),
            Err("-1e-400 is too small for this flag's f64: it would read as 0".to_string())
        );
        assert_eq!(flag_number::<f64>("1e-300"), Ok(1e-300));
        // every non-zero digit counts, 9 included
        assert_eq!(
            flag_number::<f32>("0.09e-50"),
            Err("0.09e-50 is too small for this flag's f32: it would read as 0".to_string())
        );
        assert_eq!(
            flag_number::<f32>("1e39"),
            Err("1e39 is beyond the range of this flag's f32".to_string())
        );
        assert_eq!(
            flag_number::<f64>("1e400"),
            Err("1e400 is beyond the range of this flag's f64".to_string())
        );
        assert_eq!(
            flag_number::<f32>("x1"),
            Err("'x1' is not a number".to_string())
        );
    }

    #[test]
    fn a_count_takes_the_noun_of_its_number() {
        assert_eq!(count(1usize, "batch", "batches"), "1 batch");
        assert_eq!(count(0usize, "batch", "batches"), "0 batches");
        assert_eq!(count(2u64, "token", "tokens"), "2 tokens");
        assert_eq!(count(9159usize, "batch", "batches"), "9159 batches");
        assert_eq!(count(1u64, "micro-batch", "micro-batches"), "1 micro-batch");
    }

    #[test]
    fn a_flag_reads_as_typed() {
        for (x, want) in [
            (1e-300, "1e-300"),
            (-1e-300, "-1e-300"),
            (1e300, "1e300"),
            (1e9, "1e9"),
            (999999999.0, "999999999"),
            (1e-4, "0.0001"),
            (9.5e-5, "9.5e-5"),
            (0.05, "0.05"),
            (3.0, "3"),
            (-1.0, "-1"),
            (0.0, "0"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(typed(x), want, "{x:?}");
        }
        // an f32 in its own digits, not those of its f64 value (0.1f32 is 0.10000000149011612)
        assert_eq!(typed(0.1f32), "0.1");
        assert_eq!(typed(-1e-30f32), "-1e-30");
        assert_eq!(typed(3e-3f32), "0.003");
    }

    #[test]
    fn large_values_take_the_exponent_form() {
        assert_eq!(
            magnitude(17015020848397068543572306980503552.0, 3),
            "1.702e34"
        );
        assert_eq!(magnitude(1e6, 3), "1.000e6");
        assert_eq!(magnitude(999999.0, 3), "999999.000");
        assert_eq!(magnitude(48.123456, 3), "48.123");
        assert_eq!(magnitude(-2e7, 1), "-2.0e7");
        assert_eq!(magnitude(f64::INFINITY, 3), "inf");
        assert_eq!(magnitude(f64::NAN, 3), "NaN");
    }
}
