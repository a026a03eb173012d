//! Fused top-k gating (moe.md §1.4): values and gradients against a composition of existing ops
//! (softmax, topk, gather, sum, div), hand-made ties, counts and capacity cases, the
//! straight-through estimator, selection scores, finite differences and error cases.

use moeseg::ops::topk_gate::{TopkGate, TopkGateParams};
use moeseg::testing::{assert_close, gradcheck, GradcheckOptions};
use moeseg::{Result, Rng, Tensor};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape.to_vec()).unwrap()
}

fn params(k: usize, straight_through: bool, capacity: usize) -> TopkGateParams {
    TopkGateParams {
        k,
        straight_through,
        capacity,
        eps: 1e-5,
    }
}

/// `(probs, indices, weights)` by the reference composition: softmax, top-k on the selection
/// scores (default: the detached probabilities), gather, and division by the sum plus eps.
fn reference(
    logits: &Tensor,
    k: usize,
    eps: f32,
    selection: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let probs = logits.softmax(-1)?;
    let scores = selection.cloned().unwrap_or_else(|| probs.detach());
    let (_, indices) = scores.topk(k, -1, true)?;
    let chosen = probs.gather(1, &indices)?;
    let weights = chosen.div(&chosen.sum(&[1], true)?.add_scalar(eps)?)?;
    Ok((probs, indices, weights))
}

/// Gradient of `Σ probs ⊙ R1 + Σ weights ⊙ R2` w.r.t. the logits, for fixed random `R1`, `R2`:
/// a loss on both outputs, as the MoE layer has (balancing loss and routed output).
fn logits_grad(logits: &Tensor, f: impl Fn(&Tensor) -> Result<(Tensor, Tensor)>) -> Result<Tensor> {
    let leaf = logits.detach().with_requires_grad(true);
    let (probs, weights) = f(&leaf)?;
    let r1 = randn(probs.dims(), 11);
    let r2 = randn(weights.dims(), 12);
    let loss = probs
        .mul(&r1)?
        .sum_all()?
        .add(&weights.mul(&r2)?.sum_all()?)?;
    loss.backward()?;
    Ok(leaf.grad().expect("the logits get a gradient"))
}

/// Counts from the indices, by hand: `(assignments per expert, first choices per expert)`.
fn counts_of(indices: &Tensor, experts: usize) -> (Vec<f32>, Vec<f32>) {
    let k = indices.dims()[1];
    let (mut counts, mut top1) = (vec![0.0; experts], vec![0.0; experts]);
    for (i, &e) in indices.to_host().iter().enumerate() {
        counts[e as usize] += 1.0;
        if i % k == 0 {
            top1[e as usize] += 1.0;
        }
    }
    (counts, top1)
}

/// Logits whose probabilities are far apart (rows are permutations of `0, 0.4, 0.8, …` plus a
/// row offset), so finite-difference steps never change the choice.
fn separated_logits(tokens: usize, experts: usize) -> Tensor {
    let data: Vec<f32> = (0..tokens * experts)
        .map(|i| {
            let (t, e) = (i / experts, i % experts);
            0.4 * ((3 * e + 5 * t) % experts) as f32 + 0.1 * t as f32
        })
        .collect();
    tensor(&data, &[tokens, experts])
}

#[test]
fn values_counts_and_gradients_match_the_reference_composition() {
    for (experts, tokens) in [(4, 5), (8, 7)] {
        for k in 1..=3 {
            let what = format!("E={experts} T={tokens} k={k}");
            let logits = randn(&[tokens, experts], (experts * 10 + k) as u64);
            let p = params(k, false, 0);
            let gate = logits.topk_gate(p, None).unwrap();
            let (probs, indices, weights) = reference(&logits, k, p.eps, None).unwrap();
            assert_close(&what, &gate.probs, &probs, 0.0, 0.0).unwrap();
            assert_eq!(gate.indices.to_host(), indices.to_host(), "{what}: indices");
            assert_eq!(gate.indices.dims(), &[tokens, k]);
            assert_close(&what, &gate.weights, &weights, 1e-6, 1e-7).unwrap();
            let (counts, top1) = counts_of(&indices, experts);
            assert_eq!(gate.counts.to_host(), counts, "{what}: counts");
            assert_eq!(gate.top1_counts.to_host(), top1, "{what}: top-1 counts");

            let ours = logits_grad(&logits, |x| {
                let g = x.topk_gate(p, None)?;
                Ok((g.probs, g.weights))
            })
            .unwrap();
            let expected = logits_grad(&logits, |x| {
                let (probs, _, weights) = reference(x, k, p.eps, None)?;
                Ok((probs, weights))
            })
            .unwrap();
            assert_close(&format!("{what} grad"), &ours, &expected, 1e-5, 1e-6).unwrap();
        }
    }
}

#[test]
fn ties_go_to_the_lower_expert_index() {
    let logits = tensor(
        &[
            0.0, 0.0, 0.0, 0.0, // all equal
            1.0, 2.0, 2.0, 1.0, // two tied pairs
            3.0, 1.0, 3.0, 3.0, // three tied for first
        ],
        &[3, 4],
    );
    let indices = |k| {
        logits
            .topk_gate(params(k, false, 0), None)
            .unwrap()
            .indices
            .to_host()
    };
    assert_eq!(indices(2), [0.0, 1.0, 1.0, 2.0, 0.0, 2.0]);
    assert_eq!(indices(3), [0.0, 1.0, 2.0, 1.0, 2.0, 0.0, 0.0, 2.0, 3.0]);
    assert_eq!(indices(1), [0.0, 1.0, 0.0]);
}

#[test]
fn straight_through_weights_are_one_with_the_gradient_of_p() {
    let logits = randn(&[5, 4], 3);
    let gate = logits.topk_gate(params(1, true, 0), None).unwrap();
    assert_eq!(gate.weights.to_host(), vec![1.0; 5]);
    let plain = logits.topk_gate(params(1, false, 0), None).unwrap();
    assert_eq!(gate.indices.to_host(), plain.indices.to_host());

    let ours = logits_grad(&logits, |x| {
        let g = x.topk_gate(params(1, true, 0), None)?;
        Ok((g.probs, g.weights))
    })
    .unwrap();
    // As if the weight were the chosen probability itself, without renormalisation.
    let expected = logits_grad(&logits, |x| {
        let (probs, indices, _) = reference(x, 1, 1e-5, None)?;
        let chosen = probs.gather(1, &indices)?;
        Ok((probs, chosen))
    })
    .unwrap();
    assert_close("straight-through grad", &ours, &expected, 1e-5, 1e-6).unwrap();

    // straight_through is ignored for k > 1.
    let two = logits.topk_gate(params(2, true, 0), None).unwrap();
    let (_, _, weights) = reference(&logits, 2, 1e-5, None).unwrap();
    assert_close(
        "k=2 ignores straight-through",
        &two.weights,
        &weights,
        1e-6,
        1e-7,
    )
    .unwrap();
}

#[test]
fn counts_are_assignments_and_first_choices_per_expert() {
    // Top-2 per token by hand: (2, 0), (1, 2), (2, 1), (0, 2).
    let logits = tensor(
        &[
            2.0, 0.0, 3.0, //
            0.0, 5.0, 4.0, //
            1.0, 2.0, 3.0, //
            9.0, 1.0, 8.0,
        ],
        &[4, 3],
    );
    let gate = logits.topk_gate(params(2, false, 0), None).unwrap();
    assert_eq!(
        gate.indices.to_host(),
        [2.0, 0.0, 1.0, 2.0, 2.0, 1.0, 0.0, 2.0]
    );
    assert_eq!(gate.counts.to_host(), [2.0, 2.0, 4.0]);
    assert_eq!(gate.top1_counts.to_host(), [1.0, 1.0, 2.0]);
    assert!(!gate.counts.requires_grad() && !gate.indices.requires_grad());
}

#[test]
fn capacity_sends_overflow_to_the_next_best_expert_with_room() {
    // Every token prefers expert 0; with room for 2 tokens, tokens 2 and 3 go to expert 1.
    let logits = tensor(&[2.0, 0.0, 3.0, 1.0, 1.5, 0.5, 4.0, 0.0], &[4, 2]);
    let gate = logits.topk_gate(params(1, false, 2), None).unwrap();
    assert_eq!(gate.indices.to_host(), [0.0, 0.0, 1.0, 1.0]);
    assert_eq!(gate.counts.to_host(), [2.0, 2.0]);
    assert_eq!(gate.top1_counts.to_host(), [2.0, 2.0]);
    let probs = logits.softmax(-1).unwrap();
    let chosen = probs.gather(1, &gate.indices).unwrap();
    let expected = chosen.div(&chosen.add_scalar(1e-5).unwrap()).unwrap();
    assert_close("capacity weights", &gate.weights, &expected, 1e-6, 1e-7).unwrap();

    // k = 2, E = 3, capacity 3: tokens 0, 1 → (0, 1), token 2 → (0, 2); token 3 finds
    // expert 0 full and takes its remaining experts in score order, (2, 1).
    let logits = tensor(
        &[
            3.0, 2.0, 1.0, //
            3.0, 2.0, 1.0, //
            3.0, 1.0, 2.0, //
            3.0, 1.0, 2.0,
        ],
        &[4, 3],
    );
    let gate = logits.topk_gate(params(2, false, 3), None).unwrap();
    assert_eq!(
        gate.indices.to_host(),
        [0.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 1.0]
    );
    assert_eq!(gate.counts.to_host(), [3.0, 3.0, 2.0]);
    assert_eq!(gate.top1_counts.to_host(), [3.0, 0.0, 1.0]);
}

#[test]
fn the_choice_follows_the_selection_scores_and_the_weights_use_p() {
    let logits = randn(&[5, 4], 21);
    // Scores that rank the experts in reverse index order for every token.
    let selection = tensor(
        &(0..20).map(|i| (i % 4) as f32).collect::<Vec<_>>(),
        &[5, 4],
    );
    let p = params(2, false, 0);
    let gate = logits.topk_gate(p, Some(&selection)).unwrap();
    assert_eq!(gate.indices.to_host(), [3.0, 2.0].repeat(5));
    let (probs, indices, weights) = reference(&logits, 2, p.eps, Some(&selection)).unwrap();
    assert_eq!(gate.indices.to_host(), indices.to_host());
    assert_close("probs", &gate.probs, &probs, 0.0, 0.0).unwrap();
    assert_close("weights", &gate.weights, &weights, 1e-6, 1e-7).unwrap();

    let ours = logits_grad(&logits, |x| {
        let g = x.topk_gate(p, Some(&selection))?;
        Ok((g.probs, g.weights))
    })
    .unwrap();
    let expected = logits_grad(&logits, |x| {
        let (probs, _, weights) = reference(x, 2, p.eps, Some(&selection))?;
        Ok((probs, weights))
    })
    .unwrap();
    assert_close("selection grad", &ours, &expected, 1e-5, 1e-6).unwrap();
}

/// Straight-through weights are constant in the forward, so finite differences cannot check
/// them; [`straight_through_weights_are_one_with_the_gradient_of_p`] checks their gradient.
#[test]
fn probs_and_weights_pass_finite_differences() {
    let options = GradcheckOptions {
        eps: 1e-3,
        ..GradcheckOptions::default()
    };
    // The capacity case re-assigns token 3 (see the capacity test).
    let capacity_logits = tensor(
        &[3.0, 2.0, 1.0, 3.0, 2.0, 1.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0],
        &[4, 3],
    );
    let cases = [
        (separated_logits(5, 4), params(1, false, 0)),
        (separated_logits(5, 4), params(2, false, 0)),
        (separated_logits(7, 8), params(3, false, 0)),
        (capacity_logits, params(2, false, 3)),
    ];
    for (logits, p) in cases {
        let what = format!("logits {} {p:?}", logits.shape());
        let output =
            |pick: fn(TopkGate) -> Tensor| move |t: &[Tensor]| t[0].topk_gate(p, None).map(pick);
        gradcheck(
            &format!("{what} probs"),
            std::slice::from_ref(&logits),
            output(|g| g.probs),
            options,
        )
        .unwrap();
        gradcheck(
            &format!("{what} weights"),
            std::slice::from_ref(&logits),
            output(|g| g.weights),
            options,
        )
        .unwrap();
    }
}

#[test]
fn bad_arguments_are_errors_naming_the_problem() {
    let logits = randn(&[5, 4], 1);
    let message = |r: Result<TopkGate>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let rank1 = message(randn(&[4], 1).topk_gate(params(1, true, 0), None));
    assert!(rank1.contains("topk_gate"), "{rank1}");
    let rank3 = message(randn(&[2, 3, 4], 1).topk_gate(params(1, true, 0), None));
    assert!(rank3.contains("topk_gate"), "{rank3}");
    let too_many = message(logits.topk_gate(params(5, false, 0), None));
    assert!(
        too_many.contains("k = 5") && too_many.contains("E = 4"),
        "{too_many}"
    );
    let zero = message(logits.topk_gate(params(0, false, 0), None));
    assert!(zero.contains("k = 0"), "{zero}");
    let negative_eps = message(logits.topk_gate(
        TopkGateParams {
            eps: -1.0,
            ..params(2, false, 0)
        },
        None,
    ));
    assert!(negative_eps.contains("eps"), "{negative_eps}");
    let selection = randn(&[5, 3], 2);
    let shape = message(logits.topk_gate(params(2, false, 0), Some(&selection)));
    assert!(
        shape.contains("[5, 3]") || shape.contains("5, 3"),
        "{shape}"
    );
}

#[test]
fn a_capacity_too_small_overflows_instead_of_dropping_tokens() {
    // c·E = 2·4 = 8 < k·T = 2·5 = 10: every token still gets 2 distinct experts, and the
    // assignments that find no room go over capacity (moe.md: no token is ever dropped).
    let logits = randn(&[5, 4], 1);
    let gate = logits.topk_gate(params(2, false, 2), None).unwrap();
    let counts = gate.counts.to_host();
    assert_eq!(counts.iter().sum::<f32>(), 10.0);
    assert!(counts.iter().any(|&c| c > 2.0), "{counts:?}");
    for pair in gate.indices.to_host().chunks(2) {
        assert_ne!(pair[0], pair[1]);
    }
}
