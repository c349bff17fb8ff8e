"""run_finetune --push_to_hub / --dataset_repo and run_predict --model <repo id>, against the fake Hub."""

import json

import pandas as pd
from huggingface_hub import ModelCard

import run_finetune
import run_predict
from multitask.io.hub import upload_data
from tests.hub_server import serve_fake_hub


def test_dataset_repo_train_push_and_load_back(encoder_dir, csv_files, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.chdir(tmp_path)
    with serve_fake_hub(monkeypatch, tmp_path / "hf_home") as hub:
        upload_data("tester/news-data", [csv_files["task1"], csv_files["task2"], csv_files["val"]], token=hub.token)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        run_dir = tmp_path / "run"
        metrics = run_finetune.main([
            "--model_name_or_path", str(encoder_dir), "--dataset_repo", "tester/news-data",
            "--task1_file", "task1.csv", "--task2_file", "task2.csv", "--validation_file", "val.csv",
            "--output_dir", str(run_dir), "--num_train_epochs", "1", "--use_cpu", "true",
            "--push_to_hub", "true", "--hub_model_id", "tester/news-model", "--hub_token", hub.token,
        ])
        assert metrics["hub"]["repo_id"] == "tester/news-model"
        model_commits = hub.commits_to("tester/news-model", "model")
        assert len(model_commits) == 1
        pushed = set(model_commits[0].added)
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "run/metrics.json",
                "run/thresholds.json", "run/plots/task2_loss.png"} <= pushed
        card = ModelCard.load("tester/news-model", token=hub.token)
        assert "Gate thresholds" in card.text and "category_macro_f1" in card.text

        # The data files came from the dataset repo: their hashes are recorded in the run.
        recorded = json.loads((run_dir / "run_config.json").read_text())["data_files"]
        assert len(recorded) == 3 and all(len(digest) == 64 for digest in recorded.values())

        out = tmp_path / "preds"
        predicted = run_predict.main(["--model", "tester/news-model", "--input_files", str(csv_files["test"]),
                                      "--output_dir", str(out), "--threshold", "leak"])
        local = run_predict.main(["--model", str(run_dir), "--input_files", str(csv_files["test"]),
                                  "--output_dir", str(tmp_path / "local"), "--threshold", "leak"])
        stem = csv_files["test"].stem
        assert predicted[stem]["joint_accuracy"] == local[stem]["joint_accuracy"]
        hub_table = pd.read_csv(out / f"predictions_{stem}.csv")
        local_table = pd.read_csv(tmp_path / "local" / f"predictions_{stem}.csv")
        assert hub_table["pick_prob"].tolist() == local_table["pick_prob"].tolist()

        # The token is never written anywhere: run dir, logs, outputs.
        captured = capsys.readouterr()
        assert hub.token not in captured.out + captured.err + caplog.text
        for path in list(run_dir.rglob("*")) + list(out.rglob("*")):
            if path.is_file():
                assert hub.token.encode() not in path.read_bytes(), path
