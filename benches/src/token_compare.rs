//! `ScimAccess::accepts` on one presented token, 2 000 times, for an instruction count:
//! `tests/e2e/scim.rs` runs it under callgrind and checks that the cost does not depend on how
//! much of the stored hash the presented token's hash matches (no timing oracle on the
//! secret). The presented token is the same in every mode; only the stored hash differs, in
//! its first or its last digit. `naive-first`/`naive-last` compare the two hashes byte by byte
//! with an early exit, to show that the count does see such a leak.
//!
//! Usage: token-compare right|first|last|naive-first|naive-last

use std::hint::black_box;

fn naive(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return false;
        }
    }
    true
}

/// `hash` with the digit at `at` changed.
fn flip(hash: &str, at: usize) -> String {
    let mut b = hash.as_bytes().to_vec();
    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).expect("hex")
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let token = "Q".repeat(43);
    let hash = aalgate_auth::token::hash_str(&token);
    let stored = match mode.as_str() {
        "right" => hash.clone(),
        "first" | "naive-first" => flip(&hash, 0),
        "last" | "naive-last" => flip(&hash, 63),
        other => panic!("unknown mode {other:?}"),
    };
    let access = aalgate::provisioning::ScimAccess::from_hash(&stored, "bench").expect("hash");
    let header = format!("Bearer {token}");
    let naive_mode = mode.starts_with("naive");
    let mut accepted = 0u32;
    for _ in 0..2000 {
        let ok = if naive_mode {
            let presented = aalgate_auth::token::hash_str(black_box(&token));
            naive(presented.as_bytes(), black_box(stored.as_bytes()))
        } else {
            access.accepts(Some(black_box(header.as_bytes())))
        };
        accepted += u32::from(ok);
    }
    println!("{accepted}");
}
