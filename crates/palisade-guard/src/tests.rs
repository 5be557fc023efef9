//! Unit tests for the public `Guard` API (scan, redact, inspect).

use super::*;
use palisade_core::policy::{CustomRule, GuardAction};

fn guard(default_action: GuardAction) -> Guard {
    Guard::new(&Guardrails {
        default_action,
        ..Guardrails::default()
    })
    .unwrap()
}

fn ids(ms: &[Match]) -> Vec<&str> {
    ms.iter().map(|m| &*m.detector).collect()
}

#[test]
fn guard_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Guard>();
}

#[test]
fn scan_finds_aws_key_and_card() {
    let g = guard(GuardAction::Log);
    let text = "key AKIAIOSFODNN7EXAMPLE and card 4111 1111 1111 1111.";
    let ms = g.scan(text);
    assert_eq!(ids(&ms), ["aws_access_key", "credit_card"]);
    assert_eq!(&text[ms[0].start..ms[0].end], "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(&text[ms[1].start..ms[1].end], "4111 1111 1111 1111");
}

#[test]
fn redact_numbers_consistently() {
    let g = guard(GuardAction::Redact);
    let mut r = Redactor::new();
    let (out, _) = g.redact("mail a@corp.io, b@corp.io, again a@corp.io", &mut r);
    assert_eq!(out, "mail [EMAIL_1], [EMAIL_2], again [EMAIL_1]");
    let (out, _) = g.redact("then b@corp.io", &mut r);
    assert_eq!(out, "then [EMAIL_2]", "same Redactor, same number");
}

#[test]
fn disabled_guard_finds_nothing() {
    let g = Guard::new(&Guardrails {
        enabled: false,
        ..Guardrails::default()
    })
    .unwrap();
    assert!(g.scan("AKIAIOSFODNN7EXAMPLE").is_empty());
}

#[test]
fn custom_rules_carry_their_action() {
    let cfg = Guardrails {
        custom: vec![
            CustomRule {
                id: "project_code".into(),
                regex: Some(r"\bPRJ-[0-9]{5}\b".into()),
                keywords: vec!["prj-".into()],
                action: GuardAction::Block,
            },
            CustomRule {
                id: "falcon".into(),
                regex: None,
                keywords: vec!["Project Falcon".into()],
                action: GuardAction::Redact,
            },
        ],
        ..Guardrails::default()
    };
    let g = Guard::new(&cfg).unwrap();
    let ms = g.scan("see PRJ-12345 about project falcon");
    assert_eq!(ids(&ms), ["project_code", "falcon"]);
    assert_eq!(ms[0].action, GuardAction::Block);
    assert_eq!(ms[1].action, GuardAction::Redact);
    assert!(g.scan("see PRJ-1234 about falconry").is_empty());
}

#[test]
fn debug_prints_no_rule_patterns() {
    let cfg = Guardrails {
        custom: vec![CustomRule {
            id: "leaked".into(),
            regex: Some("HUNTER2-LITERAL".into()),
            keywords: vec![],
            action: GuardAction::Block,
        }],
        ..Guardrails::default()
    };
    let d = format!("{:?}", Guard::new(&cfg).unwrap());
    assert!(d.contains("leaked") && !d.contains("HUNTER2"), "{d}");
}
