//! Randomised robustness: arbitrary text and bodies never panic, every match
//! range is a valid `char` range of the original, and every redacted body
//! parses. Deterministic (fixed seed), offline.

use palisade_core::policy::{GuardAction, Guardrails};
use palisade_guard::{Guard, Redactor, VerdictAction};

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces chosen to hit detectors, separators and Unicode tricks.
const PIECES: &[&str] = &[
    "4111",
    " ",
    "-",
    "1111",
    ".",
    "10",
    ":",
    "::",
    "2001",
    "db8",
    "@",
    "acme",
    ".io",
    "AKIA",
    "Z5ZFKKIBJ5J6WJIB",
    "\u{200B}",
    "\u{00AD}",
    "\u{FEFF}",
    "４",
    "１",
    "－",
    "\u{3000}",
    "é",
    "😀",
    "\"",
    "\\",
    "\n",
    "password",
    "=",
    "'",
    "hX9#kP2$vL7q",
    "DE89",
    "3704",
    "0044",
    "0532",
    "0130",
    "00",
    "+44",
    "20",
    "7946",
    "0958",
    "123-45-6789",
    "eyJhbGciOiJIUzI1NiJ9",
    "sk-ant-api03-",
    "ghp_",
    "x",
    "postgres://u:",
    "p4ss",
    "@db/x",
    "-----BEGIN PRIVATE KEY-----",
];

fn random_text(rng: &mut Rng) -> String {
    let n = rng.below(60);
    (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

#[test]
fn random_text_scans_and_redacts_cleanly() {
    let g = Guard::new(&Guardrails {
        default_action: GuardAction::Redact,
        ..Guardrails::default()
    })
    .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut total = 0;
    for _ in 0..3000 {
        let text = random_text(&mut rng);
        let ms = g.scan(&text);
        for m in &ms {
            assert!(m.start < m.end && m.end <= text.len(), "{m:?} in {text:?}");
            assert!(
                text.is_char_boundary(m.start) && text.is_char_boundary(m.end),
                "{m:?} in {text:?}"
            );
        }
        total += ms.len();
        let mut r = Redactor::new();
        let (out, _) = g.redact(&text, &mut r);
        // Redaction is idempotent on what it found: nothing it redacted is
        // found again (placeholders are not secrets).
        let again = g.scan(&out);
        assert!(again.len() <= ms.len(), "{text:?} -> {out:?}");

        let body = serde_json::to_vec(
            &serde_json::json!({"messages": [{"role": "user", "content": text}]}),
        )
        .unwrap();
        let v = g.inspect_request("chat.completions", &body);
        if let VerdictAction::Redact { body } = &v.action {
            let parsed: serde_json::Value =
                serde_json::from_slice(body).expect("redacted body parses");
            assert!(parsed["messages"][0]["content"].is_string());
        }
    }
    assert!(
        total > 1000,
        "the generator should hit detectors often: {total}"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let g = Guard::new(&Guardrails {
        default_action: GuardAction::Redact,
        ..Guardrails::default()
    })
    .unwrap();
    let mut rng = Rng(42);
    let alphabet = b"{}[]\":,\\u0041 \n\ttruefalsenull0123456789eE+-.abcAKIA@";
    for i in 0..3000 {
        let n = rng.below(80);
        let mut body: Vec<u8> = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        if i % 10 == 0 {
            body.push((rng.next() & 0xff) as u8);
        }
        for ep in [
            "chat.completions",
            "messages",
            "generateContent",
            "mcp",
            "other",
        ] {
            let v = g.inspect_request(ep, &body);
            if let VerdictAction::Redact { body } = &v.action {
                serde_json::from_slice::<serde_json::Value>(body).expect("redacted body parses");
            }
            let _ = g.inspect_mcp_response(&body);
        }
    }
}
