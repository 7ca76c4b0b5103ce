//! Byte sizes as people write them: `4G`, `4GiB`, `512M`, `64KiB`, `1048576`.
//!
//! Suffixes are binary (K = 1024) whether or not the `i` is written, as in `dd`, `qemu-img` and
//! `truncate`; `B` is optional. Parsing is strict: no negative, fractional or overflowing sizes.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {why} (examples: 4G, 512MiB, 65536)")]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

/// Parses a size such as `4G` or `64KiB` into bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        input: input.to_owned(),
        why,
    };
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(err("it must start with a whole number"));
    }
    let number: u64 = s[..digits_end]
        .parse()
        .map_err(|_| err("the number is too large"))?;
    let suffix = s[digits_end..].trim().to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        "p" | "pb" | "pi" | "pib" => 50,
        _ => return Err(err("unknown unit; use K, M, G, T or P")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("the size overflows 64 bits"))
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
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "G",
            "-1",
            "1.5G",
            "4X",
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
