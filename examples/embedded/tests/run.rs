//! The example runs and prints both turns' answers.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

#[test]
fn the_embedded_example_plays_two_turns() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_baton-example-embedded"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "task 1 turn 1: completed — 3 words",
            "task 1 turn 2: completed — 2 words",
        ]
    );
}
