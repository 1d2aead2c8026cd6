//! Moving step-graph state between per-user slices (as the store keeps them) and batch tensors (as
//! ONNX Runtime takes them). A state tensor's batch axis need not be the first: a Transformer's
//! key/value cache is [layers, batch, heads, span, head_dim], so a user's slice is `outer` blocks of
//! `inner` floats, one block per leading index.

use super::StateSpec;

/// Stacks per-user slices into one batch tensor along the spec's batch axis.
pub fn gather(spec: &StateSpec, rows: &[&[f32]]) -> Vec<f32> {
    let (outer, inner) = spec.outer_inner();
    let mut batch = Vec::with_capacity(outer * inner * rows.len());
    for o in 0..outer {
        for row in rows {
            batch.extend_from_slice(&row[o * inner..(o + 1) * inner]);
        }
    }
    batch
}

/// Splits a batch tensor back into per-user slices.
pub fn scatter(spec: &StateSpec, batch: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let (outer, inner) = spec.outer_inner();
    let mut out = vec![Vec::with_capacity(outer * inner); rows];
    for o in 0..outer {
        for (r, row) in out.iter_mut().enumerate() {
            let at = (o * rows + r) * inner;
            row.extend_from_slice(&batch[at..at + inner]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: serde_json::Value, batch_axis: usize) -> StateSpec {
        StateSpec {
            name: "s".into(),
            input: "s".into(),
            output: "s_out".into(),
            dtype: "float32".into(),
            shape: serde_json::from_value(shape).unwrap(),
            batch_axis,
        }
    }

    #[test]
    fn gather_and_scatter_are_inverse_for_an_inner_batch_axis() {
        // [layers=2, batch, 3]: user r's slice is [l0: 3 floats, l1: 3 floats].
        let s = spec(serde_json::json!([2, "batch", 3]), 1);
        assert_eq!(s.floats_per_user(), 6);
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let b: Vec<f32> = (10..16).map(|v| v as f32).collect();
        let batch = gather(&s, &[&a, &b]);
        assert_eq!(
            batch,
            vec![0., 1., 2., 10., 11., 12., 3., 4., 5., 13., 14., 15.]
        );
        assert_eq!(scatter(&s, &batch, 2), vec![a, b]);
    }

    #[test]
    fn leading_batch_axis_is_plain_concatenation() {
        let s = spec(serde_json::json!(["batch", 4]), 0);
        let a = vec![1.0; 4];
        let b = vec![2.0; 4];
        assert_eq!(gather(&s, &[&a, &b]), [a.clone(), b.clone()].concat());
    }
}
