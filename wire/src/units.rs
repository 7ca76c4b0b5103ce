//! Byte sizes as people write them: `4G`, `4GiB`, `10GB`, `1.5T`, `64KiB`, `1048576`.
//!
//! Units are taken as written: `KiB`, `MiB`, `GiB`, `TiB`, `PiB` (and `Ki`, `Mi`, ...) are
//! binary (IEC, powers of 1024); `kB`/`KB`, `MB`, `GB`, `TB`, `PB` are decimal (SI, powers of
//! 1000); a bare letter (`K`, `M`, `G`, `T`, `P`) is binary, as in `dd`, `qemu-img` and
//! `truncate`. `B` alone, or nothing, is bytes. Case does not matter but for the rule above.
//! A decimal fraction is accepted when the result is a whole number of bytes (`1.5G` is
//! 1,610,612,736; `1.1K` is refused). Negative and overflowing sizes are refused.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {why} (examples: 4G, 10GB, 512MiB, 1.5T, 65536)")]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

/// Parses a size such as `4G`, `10GB` or `1.5TiB` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        input: input.to_owned(),
        why,
    };
    let s = input.trim();
    let number_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = (&s[..number_end], s[number_end..].trim());
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(err("it must start with a number such as 4 or 1.5"));
    }
    if frac.len() > 18 {
        return Err(err("too many decimal places"));
    }
    let unit: u128 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "p" | "pi" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return Err(err(
            "unknown unit; use K, M, G, T, P (binary: KiB, GiB...) or kB, MB, GB, TB, PB (decimal)",
        )),
    };
    let scale = 10u128.pow(frac.len() as u32);
    let digits: u128 = format!("{whole}{frac}")
        .parse()
        .map_err(|_| err("the number is too large"))?;
    let scaled = digits
        .checked_mul(unit)
        .ok_or_else(|| err("the size overflows 64 bits"))?;
    if scaled % scale != 0 {
        return Err(err("the fraction is not a whole number of bytes"));
    }
    u64::try_from(scaled / scale).map_err(|_| err("the size overflows 64 bits"))
}

/// Formats bytes with a binary unit, for messages (`4.00 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("65536", 65536),
            ("1b", 1),
            ("4K", 4096),
            ("64KiB", 65536),
            ("64kib", 65536),
            ("512M", 512 << 20),
            ("4G", 4 << 30),
            ("4 GiB", 4 << 30),
            ("2T", 2 << 40),
            ("1P", 1 << 50),
            ("10GB", 10_000_000_000),
            ("10 GB", 10_000_000_000),
            ("10gb", 10_000_000_000),
            ("10GiB", 10 << 30),
            ("10Gi", 10 << 30),
            ("5kB", 5_000),
            ("2MB", 2_000_000),
            ("1TB", 1_000_000_000_000),
            ("1.5G", 3 << 29),
            ("1.5GB", 1_500_000_000),
            ("0.5KiB", 512),
            ("2.25M", 9 << 18),
            ("16383P", 16383 << 50),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "G",
            "-1",
            "1.1K",
            "1.",
            ".5G",
            "1.2.3G",
            "0.3B",
            "4X",
            "-1G",
            "18446744073709551616",
            "18.5EB",
            "99999999999999999999",
            "16384P",
            "4 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(format_size(4 << 30), "4.00 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
