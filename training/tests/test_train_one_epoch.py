"""Each recommender trains for one epoch on a tiny committed `user item` file, exports its graphs,
and its step graph answers like its full graph through onnxruntime: the training code cannot break
silently. Needs the training environment (training/requirements.lock); about 20 s on 2 cores.

    .tools/venv/bin/python -m unittest training.tests.test_train_one_epoch
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINING = os.path.dirname(HERE)
TINY = os.path.join(HERE, "data", "tiny_user_item.txt")

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


@unittest.skipUnless(HAVE_TORCH or os.environ.get("LONGMEM_REQUIRE_TORCH"), "the training environment is not installed")
class OneEpoch(unittest.TestCase):
    def train(self, model, out, extra=()):
        args = [sys.executable, os.path.join(TRAINING, "train.py"), "--model", model, "--data", TINY,
                "--out", out, "--epochs", "1", "--window", "8", "--dim", "16", "--heads", "1", "--layers", "1", "--span", "4",
                "--batch", "16", "--negatives", "8", "--threads", "1", "--valid-users", "40", *extra]
        run = subprocess.run(args, capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, f"train.py --model {model} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        with open(os.path.join(out, "model.json")) as f:
            manifest = json.load(f)
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        return manifest, metrics

    def card(self, out):
        """The model's card, as training/model_card.py writes it."""
        run = subprocess.run([sys.executable, os.path.join(TRAINING, "model_card.py"), out],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, f"model_card.py failed:\n{run.stderr[-3000:]}")
        with open(os.path.join(out, "README.md")) as f:
            return f.read()

    def check(self, model, extra=()):
        import torch
        with tempfile.TemporaryDirectory() as out:
            manifest, metrics = self.train(model, out, extra)
            for name in ("model.onnx", "step.onnx", "items.txt", manifest["step"]["model_file"]):
                self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
            with open(os.path.join(out, "items.txt")) as f:
                self.assertEqual(len(f.read().split()), manifest["n_items"])
            self.assertEqual(metrics["epochs"], 1)
            # The graphs end at `scores` for the daemon to rank, unless asked to rank themselves.
            import onnx
            in_graph = "--rank-in-graph" in extra
            for graph in ("model.onnx", "step.onnx"):
                g = onnx.load(os.path.join(out, graph), load_external_data=False).graph
                self.assertEqual(any(n.op_type == "TopK" for n in g.node), in_graph, graph)
                self.assertEqual("top_items" in [o.name for o in g.output], in_graph, graph)
            self.assertEqual("top_items" in [o["name"] for o in manifest["outputs"]], in_graph)
            self.assertEqual("candidates" in manifest, in_graph)
            # Step vs full graph, every test user, through onnxruntime.
            parity = metrics["parity"]
            self.assertGreater(parity["users"], 0)
            self.assertEqual(parity["same_top10_share"], 1.0, parity)
            self.assertLess(parity["max_abs_score_diff"], 1e-3, parity)
            if "prefill" in manifest["step"]:
                self.assertTrue(os.path.isfile(os.path.join(out, manifest["step"]["prefill"]["model_file"])))
                self.assertEqual(metrics["prefill_parity"]["same_top10_share"], 1.0, metrics["prefill_parity"])
            if "chunk" in manifest["step"]:
                self.assertTrue(os.path.isfile(os.path.join(out, manifest["step"]["chunk"]["model_file"])))
                chunk = metrics["chunk_parity"]
                self.assertGreater(chunk["items"], 0)
                self.assertLess(chunk["max_abs_score_diff"], 1e-3, chunk)
                self.assertLess(chunk["max_abs_state_diff"], 1e-3, chunk)
            full = metrics["full"]
            self.assertTrue(0.0 <= full["ndcg@10"] <= full["hr@10"] <= 1.0, full)
            # What trained it is recorded with it.
            env = manifest["training"]["environment"]
            self.assertEqual(env["torch"], torch.__version__)
            self.assertIn("git_commit", env)
            card = self.card(out)
            self.assertIn(f"**{full['ndcg@10']:.4f}**", card)
            self.assertIn("## Parity and cost", card)
            self.assertIn("no time cap", card)   # patience or --epochs ends training, not the clock
            return manifest

    def test_sasrec(self):
        manifest = self.check("sasrec")
        self.assertEqual(manifest["training"]["args"]["negative_draw"], "sequence")   # softmax's default
        self.assertEqual(manifest["step"]["history"], "all")
        self.assertIn("prefill", manifest["step"])
        # The chunk graph's items attend to the positions the step's cache holds, and themselves.
        mask = next(s for s in manifest["step"]["state"] if s["name"] == "cache_mask")
        self.assertEqual(manifest["step"]["chunk"]["span"], mask["shape"][1] + 1)

    def test_sasrec_gbce_with_its_own_output_embeddings(self):
        manifest = self.check("sasrec", ["--loss", "gbce", "--gbce-t", "0.75", "--separate-output",
                                         "--negative-draw", "sequence"])
        self.assertEqual(manifest["training"]["args"]["loss"], "gbce")
        self.assertTrue(manifest["training"]["args"]["separate_output"])
        self.assertEqual(manifest["training"]["args"]["negative_draw"], "sequence")

    def test_sasrec_learned_positions_exports_the_full_graph_only(self):
        # The original SASRec's positions, kept for the ablation: no exact step, so no step graph,
        # and a manifest without one (the daemon then serves it in full mode only).
        with tempfile.TemporaryDirectory() as out:
            manifest, metrics = self.train("sasrec", out, ["--positions", "learned"])
            self.assertTrue(os.path.isfile(os.path.join(out, "model.onnx")))
            self.assertFalse(os.path.exists(os.path.join(out, "step.onnx")))
            self.assertNotIn("step", manifest)
            self.assertNotIn("parity", metrics)
            self.assertEqual(manifest["training"]["args"]["positions"], "learned")
            full = metrics["full"]
            self.assertGreater(full["users"], 0)
            self.assertTrue(0.0 <= full["ndcg@10"] <= full["hr@10"] <= 1.0, full)
            card = self.card(out)
            self.assertIn("learned absolute position embeddings", card)
            self.assertIn(f"**{full['ndcg@10']:.4f}**", card)
            self.assertNotIn("## Parity and cost", card)

    def test_sasrec_refits_by_default(self):
        # Validation chooses the epochs, then the model that ships is trained again, from the same
        # start, on the training and validation items for that many epochs: SASRec's default.
        with tempfile.TemporaryDirectory() as out:
            manifest, metrics = self.train("sasrec", out, ["--epochs", "2", "--patience", "5"])
            self.assertEqual(metrics["epochs"], 2)
            self.assertIn(metrics["best_epoch"], (1, 2))
            self.assertEqual(metrics["refit"]["epochs"], metrics["best_epoch"])
            self.assertTrue(manifest["training"]["args"]["refit"])
            self.assertEqual(metrics["parity"]["same_top10_share"], 1.0, metrics["parity"])
            self.assertIn(f"refitted on the training and validation items for {metrics['best_epoch']} epoch", self.card(out))

    def test_cosine_schedule_and_its_refit(self):
        # The refit trains the epochs validation chose along the same curve, and the card says so.
        with tempfile.TemporaryDirectory() as out:
            manifest, metrics = self.train("sasrec", out, ["--schedule", "cosine", "--refit", "--epochs", "2", "--patience", "5"])
            self.assertEqual(manifest["training"]["args"]["schedule"], "cosine")
            self.assertEqual(metrics["refit"]["epochs"], metrics["best_epoch"])
            self.assertEqual(metrics["parity"]["same_top10_share"], 1.0, metrics["parity"])
            self.assertIn("Adam 0.001 falling to 0 along a half cosine over 2 epochs", self.card(out))

    def test_no_refit_where_not_asked(self):
        # --no-refit ships the epoch validation chose; the recurrent models refit only when asked.
        for model, extra in (("sasrec", ["--no-refit"]), ("gru4rec", [])):
            with tempfile.TemporaryDirectory() as out:
                manifest, metrics = self.train(model, out, extra)
                self.assertNotIn("refit", metrics)
                self.assertFalse(manifest["training"]["args"]["refit"])
                self.assertNotIn("refitted", self.card(out))

    def test_refit_for_a_given_count_skips_validation(self):
        with tempfile.TemporaryDirectory() as out:
            manifest, metrics = self.train("gru4rec", out, ["--refit-epochs", "2"])
            self.assertEqual(metrics["epochs"], 0)
            self.assertNotIn("valid_full_ndcg@10", metrics)   # nothing was validated
            self.assertEqual(metrics["refit"]["epochs"], 2)
            self.assertEqual(metrics["parity"]["same_top10_share"], 1.0, metrics["parity"])
            self.assertIn("no validation run: trained on the training and validation items for 2 epochs", self.card(out))

    def test_counts_of_epochs_below_one_and_contradictions_are_refused(self):
        # No epoch would leave a model untrained (or none at all) to export; --no-refit with
        # --refit-epochs asks for a refit and for none.
        for flags, says in ((["--epochs", "0"], "--epochs"), (["--refit-epochs", "-1"], "--refit-epochs"),
                            (["--no-refit", "--refit-epochs", "2"], "--no-refit")):
            with tempfile.TemporaryDirectory() as out:
                args = [sys.executable, os.path.join(TRAINING, "train.py"), "--model", "gru4rec", "--data", TINY,
                        "--out", out, *flags]
                run = subprocess.run(args, capture_output=True, text=True, timeout=300)
                self.assertEqual(run.returncode, 2, run.stderr[-2000:])
                self.assertIn(says, run.stderr)
                self.assertFalse(os.path.exists(os.path.join(out, "model.onnx")), "a model was exported")

    def test_gru4rec(self):
        self.check("gru4rec")

    def test_gru4rec_ranked_in_graph(self):
        manifest = self.check("gru4rec", ["--rank-in-graph"])
        self.assertEqual(manifest["step"]["outputs"], ["top_items", "top_scores", "scores"])

    def test_memory(self):
        self.check("memory")


if __name__ == "__main__":
    unittest.main()
