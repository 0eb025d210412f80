//! Kubernetes resource quantities: parsing what users write in reserved-resource and
//! eviction settings, and printing capacity in the canonical form the API server and
//! upstream kubelets use (so `kubectl describe node` shows the same strings).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid quantity {0:?}")]
pub struct QuantityError(pub String);

/// Parses a quantity ("100m", "1.5", "256Mi", "2G", "1e3") into thousandths of a unit,
/// rounding up as upstream does when it drops precision.
pub fn parse_milli(text: &str) -> Result<i128, QuantityError> {
    let err = || QuantityError(text.to_string());
    let s = text.trim();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err());
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: i128 = digits.parse().map_err(|_| err())?;
    // value = mantissa * 10^-scale * multiplier; everything kept as a fraction num/den.
    let scale = u32::try_from(frac_part.len()).map_err(|_| err())?;
    let mut num = mantissa.checked_mul(1000).ok_or_else(err)?;
    let mut den = 10i128.checked_pow(scale).ok_or_else(err)?;
    let binary = |power: u32| 1024i128.pow(power);
    let decimal = |power: u32| 10i128.pow(power);
    match suffix {
        "" => {}
        "m" => den = den.checked_mul(1000).ok_or_else(err)?,
        "k" => num *= decimal(3),
        "M" => num *= decimal(6),
        "G" => num *= decimal(9),
        "T" => num *= decimal(12),
        "P" => num *= decimal(15),
        "E" => num *= decimal(18),
        "Ki" => num *= binary(1),
        "Mi" => num *= binary(2),
        "Gi" => num *= binary(3),
        "Ti" => num *= binary(4),
        "Pi" => num *= binary(5),
        "Ei" => num *= binary(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| err())?;
            if !(-18..=18).contains(&power) {
                return Err(err());
            }
            if power >= 0 {
                num = num.checked_mul(decimal(power as u32)).ok_or_else(err)?;
            } else {
                den = den
                    .checked_mul(decimal(power.unsigned_abs()))
                    .ok_or_else(err)?;
            }
        }
        _ => return Err(err()),
    }
    let value = (num + den - 1) / den;
    Ok(if negative { -value } else { value })
}

/// Parses a quantity of whole units (bytes, pods), rounding fractions up.
pub fn parse_units(text: &str) -> Result<i64, QuantityError> {
    let milli = parse_milli(text)?;
    i64::try_from((milli + 999).div_euclid(1000)).map_err(|_| QuantityError(text.to_string()))
}

/// CPU in canonical DecimalSI form: "2", "1900m".
pub fn format_cpu_milli(milli: i64) -> String {
    if milli % 1000 == 0 {
        format_decimal(milli / 1000)
    } else {
        format!("{milli}m")
    }
}

/// A count in canonical DecimalSI form: "110", "5k" (upstream prints multiples of 1000
/// with a suffix).
pub fn format_decimal(value: i64) -> String {
    const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    if value == 0 {
        return "0".into();
    }
    let mut v = value;
    let mut i = 0;
    while v % 1000 == 0 && i + 1 < SUFFIXES.len() {
        v /= 1000;
        i += 1;
    }
    format!("{v}{}", SUFFIXES[i])
}

/// Bytes in canonical BinarySI form: the largest power of 1024 that divides the value
/// ("8148236Ki", "1Gi"), plain bytes otherwise, and values below 1024 as DecimalSI.
pub fn format_bytes(value: i64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if value.abs() < 1024 {
        return format_decimal(value);
    }
    let mut v = value;
    let mut i = 0;
    while v % 1024 == 0 && i + 1 < SUFFIXES.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", SUFFIXES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_memory() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("1.5"), Ok(1500));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_units("256Mi"), Ok(256 << 20));
        assert_eq!(parse_units("1G"), Ok(1_000_000_000));
        assert_eq!(parse_units("1e3"), Ok(1000));
        assert_eq!(parse_units("0.5Ki"), Ok(512));
        assert_eq!(parse_milli("0.0001"), Ok(1), "rounds up");
        for bad in ["", "Mi", "1x", "1.2.3", "--1", "1e99"] {
            assert!(parse_milli(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_cpu_milli(2000), "2");
        assert_eq!(format_cpu_milli(1900), "1900m");
        assert_eq!(format_decimal(110), "110");
        assert_eq!(format_bytes(8_148_236 * 1024), "8148236Ki");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(9_004_241_059), "9004241059");
        assert_eq!(format_bytes(0), "0");
    }
}
