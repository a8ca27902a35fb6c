//! The documentation kept in step with the code: docs/configuration.md is
//! the reference the config sections generate (`ringpost
//! config-reference`), so a key added to the code without its doc, or a
//! default changed, fails here until the file is made again.

#[test]
fn docs_configuration_md_is_the_generated_reference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    let code = ringpost::config::reference_markdown();
    if file == code {
        return;
    }
    let first = file
        .lines()
        .zip(code.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| file.lines().count().min(code.lines().count()));
    panic!(
        "docs/configuration.md differs from the code's reference from line {}:\n  file: {:?}\n  code: {:?}\n\
         Make it again: cargo run --release -- config-reference > docs/configuration.md",
        first + 1,
        file.lines().nth(first),
        code.lines().nth(first),
    );
}
