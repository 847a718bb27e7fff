//! LOINC codes as written: `NNNNN-C`, one to seven digits, a dash and the Mod 10 check
//! digit LOINC computes over the digits. A code that fails its check digit is a typo
//! (`8480-7` for systolic blood pressure's `8480-6`): no result would ever carry it.

/// The check digit LOINC gives the digits `number` (one to seven ASCII digits), or `None`
/// when `number` is not that.
pub fn check_digit(number: &str) -> Option<u8> {
    if number.is_empty() || number.len() > 7 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // From the right, every other digit (the first included) doubled; digits summed.
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let twice = d * 2;
                twice / 10 + twice % 10
            } else {
                d
            }
        })
        .sum();
    u8::try_from((10 - sum % 10) % 10).ok()
}

/// Whether `code` is a LOINC code: digits, `-`, and their check digit.
pub fn is_loinc(code: &str) -> bool {
    what_is_wrong(code).is_none()
}

/// Why `code` is not a LOINC code, in words for the person who wrote it (naming the
/// check digit its digits need when only that is wrong); `None` when it is one.
pub fn what_is_wrong(code: &str) -> Option<String> {
    let Some((number, check)) = code.split_once('-') else {
        return Some(
            "a LOINC code is digits, a dash and a check digit (`29463-7`): this one has no dash"
                .into(),
        );
    };
    let Some(expected) = check_digit(number) else {
        return Some(
            "a LOINC code starts with one to seven digits, then a dash and a check digit (`29463-7`)"
                .into(),
        );
    };
    match check.as_bytes() {
        [c] if c.is_ascii_digit() => (c - b'0' != expected).then(|| {
            format!(
                "the check digit of LOINC `{number}-…` is {expected}, not {}: a typo in the digits or the check digit",
                c - b'0'
            )
        }),
        _ => Some("a LOINC code ends with a dash and one check digit (`29463-7`)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_codes_pass_and_typos_do_not() {
        for ok in [
            "8480-6", "8462-4", "29463-7", "4548-4", "2345-7", "33762-6", "2160-0", "62238-1",
            "3141-9", "59408-5", "1-8",
        ] {
            assert!(is_loinc(ok), "{ok}");
        }
        for bad in [
            "8480-7",
            "84806",
            "8480_6",
            "8480-",
            "-6",
            "8480-66",
            "12345678-9",
            "84a0-6",
            "",
        ] {
            assert!(!is_loinc(bad), "{bad}");
        }
        let why = what_is_wrong("8480-7").expect("wrong");
        assert!(why.contains("is 6, not 7"), "{why}");
        assert!(what_is_wrong("8480_6").expect("wrong").contains("no dash"));
    }
}
