use serde_json::json;

use super::*;

#[test]
fn entra_quirks_parse() {
    let u = UserIn::parse(&json!({"userName": "ann@clinic.example", "active": "False"})).unwrap();
    assert!(!u.active);
}
