//! Math answers compared as math answers: a reference such as GSM8K's
//! `#### 1,000` or MATH's `\frac{1}{2}` and a model's `1000` or `0.5` are
//! the same answer.
//!
//! - [`reference`] reads a dataset's answer field: the text after GSM8K's
//!   `####`, the last `\boxed{...}`, or the whole field.
//! - [`normalise`] writes an answer in one canonical form: no `$`, no
//!   `\left`/`\right`, no `\text{...}` wrapper or units after a number, no
//!   thousands separators, `\dfrac`/`\tfrac` as `\frac`, `\frac12` as
//!   `\frac{1}{2}`, no trailing period, no spaces.
//! - [`equivalent`] compares two answers: equal canonical forms, or the
//!   same number (integers, decimals, fractions, `a/b`, percentages,
//!   negative signs) exactly as rationals where both are rational.

/// The answer a dataset's answer field states: the text after the last
/// `####` (GSM8K), else the content of the last `\boxed{...}` (MATH), else
/// the field itself; trimmed.
pub fn reference(field: &str) -> String {
    if let Some(i) = field.rfind("####") {
        return field[i + 4..].trim().to_string();
    }
    if let Some(b) = last_boxed(field) {
        return b;
    }
    field.trim().to_string()
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`) of `text`, with
/// balanced braces.
pub fn last_boxed(text: &str) -> Option<String> {
    let (i, open) = ["\\boxed{", "\\fbox{"]
        .iter()
        .filter_map(|o| text.rfind(o).map(|i| (i, *o)))
        .max_by_key(|(i, _)| *i)?;
    let rest = &text[i + open.len()..];
    let mut depth = 1;
    for (j, ch) in rest.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(rest[..j].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// `answer` in canonical form (see the module documentation).
pub fn normalise(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    if let Some(b) = last_boxed(&s) {
        s = b;
    }
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\%", "%"),
        ("\\$", ""),
        ("$", ""),
        ("−", "-"),
    ] {
        s = s.replace(from, to);
    }
    s = unwrap_command(&s, "\\text");
    s = unwrap_command(&s, "\\textbf");
    s = unwrap_command(&s, "\\mathrm");
    s = unwrap_command(&s, "\\mbox");
    s.retain(|c| !c.is_whitespace());
    while s.ends_with('.') {
        s.pop();
    }
    s = brace_fraction_arguments(&s);
    // Thousands separators: a comma followed by exactly three digits,
    // between digits ("1,000,000"), not a list ("1,2").
    s = strip_thousands(&s);
    // Units or words after a number ("18dollars", "5cm"): the number.
    if let Some(n) = leading_number(&s)
        && n.len() < s.len()
        && s[n.len()..].chars().all(|c| c.is_alphabetic())
    {
        s = n.to_string();
    }
    if let Some(r) = Rational::parse(&s) {
        return r.to_string();
    }
    s
}

/// Whether two answers are the same answer (see the module
/// documentation).
pub fn equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (normalise(a), normalise(b));
    if a == b {
        return true;
    }
    match (number_of(&a), number_of(&b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// `\cmd{x}` replaced by `x`, wherever it occurs.
fn unwrap_command(s: &str, cmd: &str) -> String {
    let open = format!("{cmd}{{");
    let mut s = s.to_string();
    while let Some(i) = s.find(&open) {
        let rest = &s[i + open.len()..];
        let mut depth = 1;
        let Some(end) = rest.char_indices().find_map(|(j, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(j)
        }) else {
            break;
        };
        let inner = rest[..end].to_string();
        s = format!("{}{}{}", &s[..i], inner, &rest[end + 1..]);
    }
    s
}

/// `\frac12` and `\frac1{x}` written with braces: `\frac{1}{2}`.
fn brace_fraction_arguments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\\frac") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        for _ in 0..2 {
            match rest.chars().next() {
                Some('{') => {
                    let mut depth = 0;
                    let end = rest
                        .char_indices()
                        .find_map(|(j, c)| {
                            match c {
                                '{' => depth += 1,
                                '}' => depth -= 1,
                                _ => {}
                            }
                            (depth == 0).then_some(j)
                        })
                        .unwrap_or(rest.len() - 1);
                    out.push_str(&rest[..=end]);
                    rest = &rest[end + 1..];
                }
                Some(c) if c.is_ascii_alphanumeric() => {
                    out.push('{');
                    out.push(c);
                    out.push('}');
                    rest = &rest[c.len_utf8()..];
                }
                _ => break,
            }
        }
    }
    out.push_str(rest);
    out
}

fn strip_thousands(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, ch) in s.char_indices() {
        let separator = ch == ','
            && i > 0
            && b[i - 1].is_ascii_digit()
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit());
        if !separator {
            out.push(ch);
        }
    }
    out
}

/// The number at the start of `s` (sign, digits, one decimal point).
fn leading_number(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits_from = i;
    let mut dot = false;
    while i < b.len() && (b[i].is_ascii_digit() || (b[i] == b'.' && !dot)) {
        dot |= b[i] == b'.';
        i += 1;
    }
    (b[digits_from..i].iter().any(u8::is_ascii_digit)).then(|| &s[..i])
}

/// The value of a canonical answer that is a number, as `f64`.
fn number_of(s: &str) -> Option<f64> {
    if let Some(r) = Rational::parse(s) {
        return Some(r.num as f64 / r.den as f64);
    }
    let (body, scale) = match s.strip_suffix('%') {
        Some(b) => (b, 0.01),
        None => (s, 1.0),
    };
    body.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v * scale)
}

/// An exact rational number, in lowest terms with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rational {
    num: i128,
    den: i128,
}

impl Rational {
    fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()).max(1) as i128;
        let sign = if den < 0 { -1 } else { 1 };
        Some(Self {
            num: sign * num / g,
            den: sign * den / g,
        })
    }

    /// An integer, a decimal, `a/b`, `\frac{a}{b}` (each part such a
    /// number, with an optional leading `-`) or a percentage.
    fn parse(s: &str) -> Option<Self> {
        if let Some(body) = s.strip_suffix('%') {
            let r = Self::parse(body)?;
            return Self::new(r.num, r.den.checked_mul(100)?);
        }
        if let Some(rest) = s.strip_prefix('-') {
            let r = Self::parse(rest)?;
            return Some(Self {
                num: -r.num,
                den: r.den,
            });
        }
        if let Some(inner) = s.strip_prefix("\\frac{") {
            let (a, b) = inner.strip_suffix('}')?.split_once("}{")?;
            return Self::divide(Self::parse(a)?, Self::parse(b)?);
        }
        if let Some((a, b)) = s.split_once('/') {
            return Self::divide(Self::parse(a)?, Self::parse(b)?);
        }
        Self::decimal(s)
    }

    fn decimal(s: &str) -> Option<Self> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
            return None;
        }
        if int.len() + frac.len() > 30 {
            return None;
        }
        let frac = frac.trim_end_matches('0');
        let num: i128 = format!("{int}{frac}").parse().unwrap_or(0);
        Self::new(num, 10i128.checked_pow(frac.len() as u32)?)
    }

    fn divide(a: Self, b: Self) -> Option<Self> {
        Self::new(a.num.checked_mul(b.den)?, a.den.checked_mul(b.num)?)
    }
}

impl std::fmt::Display for Rational {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference fields as GSM8K and MATH write them, with the answer
    /// each states.
    const REFERENCES: &[(&str, &str)] = &[
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
            "72",
        ),
        (
            "He pays 1,000 + 500 = <<1000+500=1500>>1500.\n#### 1,500",
            "1500",
        ),
        ("#### -3", "-3"),
        ("So the answer is\n#### 18.00", "18"),
        ("#### $25", "25"),
        ("#### 0.5", "1/2"),
        ("The total is $\\boxed{\\frac{1}{2}}$.", "1/2"),
        ("Hence $\\boxed{\\dfrac{3}{4}}$", "3/4"),
        ("so $x = \\boxed{\\frac12}$", "1/2"),
        ("We get \\boxed{10\\%}.", "1/10"),
        ("\\boxed{\\text{(C)}}", "(C)"),
        ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}"),
        ("\\boxed{(3,-1)}", "(3,-1)"),
        ("\\boxed{90^\\circ}", "90"),
        ("The answer is \\boxed{\\left( 1, 2 \\right)}", "(1,2)"),
        ("\\boxed{x^2+2x+1}", "x^2+2x+1"),
        ("\\boxed{\\$1.50}", "3/2"),
        ("\\boxed{5\\text{ cm}}", "5"),
        ("\\boxed{-\\frac{7}{2}}", "-7/2"),
        ("\\fbox{12}", "12"),
    ];

    #[test]
    fn references_state_their_answer() {
        for (field, want) in REFERENCES {
            assert_eq!(normalise(&reference(field)), *want, "{field:?}");
        }
    }

    /// Pairs of answers that are the same (a model's against a
    /// reference's), and pairs that are not.
    const SAME: &[(&str, &str)] = &[
        ("1,000", "1000"),
        ("1,000,000", "1000000"),
        ("18.00", "18"),
        ("18.", "18"),
        ("\\frac12", "0.5"),
        ("\\frac{1}{2}", "1/2"),
        ("\\dfrac{6}{8}", "0.75"),
        ("-\\frac{3}{4}", "-0.75"),
        ("$42$", "42"),
        ("\\$42", "42"),
        ("42 dollars", "42"),
        ("50\\%", "0.5"),
        ("50%", "1/2"),
        (" 7 ", "7"),
        ("0.333333333333", "0.333333333333"),
        ("\\boxed{3}", "3"),
        ("\\left(2,3\\right)", "(2,3)"),
        ("\\text{Monday}", "Monday"),
        ("x = 5", "x=5"),
        ("−4", "-4"),
        ("2/4", "\\frac{1}{2}"),
        ("1e3", "1000"),
        ("3.14159", "3.14159"),
        ("\\tfrac{9}{3}", "3"),
        ("007", "7"),
    ];

    const DIFFERENT: &[(&str, &str)] = &[
        ("1,2", "12"),
        ("18", "180"),
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("-5", "5"),
        ("(2,3)", "(3,2)"),
        ("x^2", "x^3"),
        ("0.5", "5"),
        ("1/0", "0"),
        ("A", "B"),
        ("2\\sqrt{3}", "3\\sqrt{2}"),
    ];

    #[test]
    fn equivalent_answers_are_equal_and_others_are_not() {
        for (a, b) in SAME {
            assert!(equivalent(a, b), "{a:?} and {b:?} are the same answer");
            assert!(equivalent(b, a), "{b:?} and {a:?} are the same answer");
        }
        for (a, b) in DIFFERENT {
            assert!(!equivalent(a, b), "{a:?} and {b:?} differ");
        }
        assert!(REFERENCES.len() + SAME.len() + DIFFERENT.len() >= 50);
    }

    #[test]
    fn absurd_input_does_not_panic() {
        for s in [
            "",
            "\\boxed{",
            "\\frac{",
            "\\frac",
            "}}}{{{",
            "99999999999999999999999999999999999999999",
            "1/0",
            "-",
            ".",
            "%",
            "\\text{",
            "ü,123",
        ] {
            let _ = normalise(s);
            let _ = equivalent(s, s);
            let _ = reference(s);
        }
    }
}
