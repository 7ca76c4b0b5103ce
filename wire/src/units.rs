//! Byte sizes as people write them: `4G`, `4GiB`, `10GB`, `1.5T`, `64KiB`, `1048576`.
//!
//! The one grammar, for the agent's CLI and configuration and the controller's API alike:
//! `NUMBER [" "] [UNIT]`, nothing before or after, the unit spelt exactly as below.
//! * `KiB`, `MiB`, `GiB`, `TiB`, `PiB` (and `Ki`, `Mi`, `Gi`, `Ti`, `Pi`) are binary (IEC,
//!   powers of 1024); a bare `K`, `M`, `G`, `T`, `P` is binary too, as in `dd`, `qemu-img`
//!   and `truncate`.
//! * `kB` (or `KB`), `MB`, `GB`, `TB`, `PB` are decimal (SI, powers of 1000).
//! * `B`, or no unit, is bytes.
//!
//! Anything else is refused rather than guessed: other cases (`1Gb` could be bits, `1gb`,
//! `1kib`), spaces around the size or more than one inside it. A decimal fraction is taken
//! when the result is a whole number of bytes (`1.5G` is 1,610,612,736; `1.1K` is refused).
//! Negative and overflowing sizes are refused.

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
    let s = input;
    if s.trim() != s {
        return Err(err("no spaces before or after the size"));
    }
    let number_end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = (&s[..number_end], &s[number_end..]);
    let suffix = suffix.strip_prefix(' ').unwrap_or(suffix);
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
    let unit: u128 =
        match suffix {
            "" | "B" => 1,
            "K" | "Ki" | "KiB" => 1 << 10,
            "M" | "Mi" | "MiB" => 1 << 20,
            "G" | "Gi" | "GiB" => 1 << 30,
            "T" | "Ti" | "TiB" => 1 << 40,
            "P" | "Pi" | "PiB" => 1 << 50,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "PB" => 1_000_000_000_000_000,
            _ => return Err(err(
                "unknown unit; units are spelt K, M, G, T, P or KiB, MiB, GiB, TiB, PiB (binary) \
             and kB, MB, GB, TB, PB (decimal), B for bytes",
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
            ("1B", 1),
            ("4K", 4096),
            ("64KiB", 65536),
            ("512M", 512 << 20),
            ("4G", 4 << 30),
            ("4 GiB", 4 << 30),
            ("2T", 2 << 40),
            ("1P", 1 << 50),
            ("10GB", 10_000_000_000),
            ("10 GB", 10_000_000_000),
            ("10KB", 10_000),
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
            "1Gb",
            "1gb",
            "64kib",
            "1g",
            "1b",
            " 1G",
            "1G ",
            "1  G",
            "1\tG",
            "1G\n",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(format_size(4 << 30), "4.00 GiB");
        assert_eq!(format_size(100), "100 B");
    }
}
