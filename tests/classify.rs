//! The default bounce classification rules against a labelled corpus of
//! real replies (tests/data/bounce-replies.tsv: providers' documentation
//! and bounce-classifier projects, each line citing its source; labels
//! given from what the source says the reply means). The default rules
//! must get at least 98% right; the ones they get wrong are printed.

use ringpost::classify::{BounceCategory, Classifier};

#[test]
fn default_rules_classify_the_labelled_corpus() {
    let (total, wrong) = score(include_str!("data/bounce-replies.tsv"), true);
    assert!(total >= 200, "at least 200 labelled replies, got {total}");
    let accuracy = (total - wrong.len()) as f64 / total as f64;
    assert!(
        accuracy >= 0.98,
        "{:.1}% < 98%:\n{}",
        accuracy * 100.0,
        wrong.join("\n")
    );
}

/// Replies the rules were never tuned on: the estimate of how they do on
/// new ones (77% when written: see the closing note of issue 18). Printed,
/// and held to a floor well under the tuned corpus's.
#[test]
fn default_rules_on_held_out_replies() {
    let (total, wrong) = score(include_str!("data/bounce-replies-holdout.tsv"), false);
    let accuracy = (total - wrong.len()) as f64 / total as f64;
    assert!(
        accuracy >= 0.75,
        "{:.1}%:\n{}",
        accuracy * 100.0,
        wrong.join("\n")
    );
}

/// (replies, the misclassified ones); prints the score per category.
fn score(corpus: &str, every_category: bool) -> (usize, Vec<String>) {
    let classifier = Classifier::default_rules();
    let mut total = 0;
    let mut wrong = Vec::new();
    let mut per_category = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for line in corpus
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "category, reply, source: {line:?}");
        let (label, reply, source) = (cols[0], cols[1], cols[2]);
        let expected = BounceCategory::parse(label).unwrap_or_else(|| panic!("label {label}"));
        let temporary = reply.starts_with('4');
        let got = classifier.classify(reply, temporary);
        total += 1;
        let e = per_category.entry(expected.as_str()).or_default();
        e.0 += 1;
        if got == expected {
            e.1 += 1;
        } else {
            wrong.push(format!(
                "{source}: {reply:?}: labelled {label}, classified {}",
                got.as_str()
            ));
        }
    }
    let right = total - wrong.len();
    let accuracy = right as f64 / total as f64;
    println!("{right}/{total} = {:.1}%", accuracy * 100.0);
    for (category, (n, ok)) in &per_category {
        println!("  {category}: {ok}/{n}");
    }
    for w in &wrong {
        println!("  wrong: {w}");
    }
    if every_category {
        for c in BounceCategory::ALL {
            assert!(
                per_category.contains_key(c.as_str()),
                "{} has no sample",
                c.as_str()
            );
        }
    }
    (total, wrong)
}
