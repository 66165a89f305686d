//! The guide's later blocks include `guide/account.rs` for the account its first two blocks
//! build; this keeps the two the same code.

#[test]
fn the_included_account_is_the_one_the_guide_builds() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let guide = std::fs::read_to_string(format!("{dir}/../../docs/guide.md")).unwrap();
    let included = std::fs::read_to_string(format!("{dir}/guide/account.rs")).unwrap();
    let blocks: Vec<&str> = guide
        .split("```rust\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default())
        .collect();
    assert!(
        blocks.len() >= 2,
        "the guide has {} rust blocks",
        blocks.len()
    );
    // The blocks' code, without the lines the page hides and the checks that follow it.
    let code = |b: &str| {
        b.lines()
            .filter(|l| !l.starts_with("# ") && !l.starts_with("let ") && !l.starts_with("assert"))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    };
    let built = format!("{}\n\n{}", code(blocks[0]), code(blocks[1]));
    let included: String = included
        .lines()
        .skip_while(|l| l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(included.trim(), built.trim());
}
