import json

import pytest
import torch

from reward_models.base import load_reward_model, registered_types, write_reward_config
from reward_models.process import ProcessRewardModel, chat_layout, token_convention
from reward_models.steps import MATH_SHEPHERD_FORMAT, StepFormat
from reward_models.testing import save_tiny, tiny_causal_lm, tiny_token_classifier
from reward_models.types import DataError

PROMPTS = ["Q: 2+3*4\n", "Q: 7-5\n", "Q: 9\n", "Q: 1+1+1+1\n"]
STEPS = [["3*4=12", "2+12=14", "Answer: 14"], ["7-5=2", "Answer: 2"], ["Answer: 9"],
         ["1+1=2", "2+1=3", "3+1=4", "Answer: 4"]]


class ForwardCounter:
    """Counts backbone forward calls through a forward hook."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


def flat(rows):
    return [v for row in rows for v in row]


def _logits(model, ids):
    """Reference logits of one unpadded sequence (eval mode, training flag restored)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0].double()
    model.train(was)
    return out


@pytest.mark.parametrize("num_labels", [2, 3])
def test_head_batch_equals_alone_and_prefixes_one_forward(tokenizer, num_labels):
    model = tiny_token_classifier(tokenizer, num_labels=num_labels, seed=1)
    prm = ProcessRewardModel.from_model(model, tokenizer, backend="head", neutral="half")
    assert prm.model is model  # wrapped, not copied
    counter = ForwardCounter(model.transformer)
    batch = prm.score_steps(PROMPTS, STEPS)
    assert counter.calls == 1  # all steps of all solutions in one backbone forward
    counter.close()
    assert [len(r) for r in batch] == [len(s) for s in STEPS]
    for p, st, row in zip(PROMPTS, STEPS, batch):
        alone = prm.score_steps([p], [st])[0]
        assert alone == pytest.approx(row, abs=1e-5)
        prefixes = [prm.score_steps([p], [st[: j + 1]])[0][-1] for j in range(len(st))]
        assert prefixes == pytest.approx(row, abs=1e-5)
    assert model.training  # scoring restored the training flag of a live model


def test_head_length_sorted_chunks_keep_input_order(tokenizer):
    """Solutions are chunked by length (less padding); scores still come back in input order."""
    model = tiny_token_classifier(tokenizer, seed=2)
    prm = ProcessRewardModel.from_model(model, tokenizer, backend="head", batch_size=2)
    prompts, steps = PROMPTS + PROMPTS[::-1], STEPS + STEPS[::-1]
    counter = ForwardCounter(model.transformer)
    batch = prm.score_steps(prompts, steps)
    assert counter.calls == 4  # 8 solutions in chunks of 2
    counter.close()
    for p, st, row in zip(prompts, steps, batch):
        assert len(row) == len(st)
        assert prm.score_steps([p], [st])[0] == pytest.approx(row, abs=1e-5)


@pytest.mark.parametrize("shared_prefix", [False, True])
def test_verification_computes_only_last_position_logits(tokenizer, shared_prefix):
    lm = tiny_causal_lm(tokenizer, seed=5)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", shared_prefix=shared_prefix)
    prm.score_steps(PROMPTS[:1], STEPS[:1])  # (with shared_prefix, the first call also checks it per question)
    seen = []
    handle = lm.register_forward_hook(lambda m, a, kw, out: seen.append((kw.get("logits_to_keep"), out.logits.shape)),
                                      with_kwargs=True)
    prm.score_steps(PROMPTS[:2], STEPS[:2])
    handle.remove()
    if not shared_prefix:
        assert seen and all(keep == 1 and shape[1] == 1 for keep, shape in seen)
    else:  # one packed row per solution, its question ends laid out last: logits of those positions only
        assert seen and all(keep == shape[1] <= 3 for keep, shape in seen)
        assert sum(shape[0] for _, shape in seen) == 2


def test_head_probabilities_and_neutral_rules(tokenizer):
    model = tiny_token_classifier(tokenizer, num_labels=3, seed=2)
    p, st = PROMPTS[0], STEPS[0]
    t = StepFormat().tokenize(tokenizer, p, st)
    probs = _logits(model, t.input_ids)[t.score_positions].softmax(-1)  # classes: -1, 0, +1
    expected = {"positive": probs[:, 1] + probs[:, 2], "negative": probs[:, 2], "half": probs[:, 2] + 0.5 * probs[:, 1]}
    for rule, want in expected.items():
        prm = ProcessRewardModel.from_model(model, tokenizer, neutral=rule)
        assert prm.score_steps([p], [st])[0] == pytest.approx(want.tolist(), abs=1e-6)
        lo = ProcessRewardModel.from_model(model, tokenizer, neutral=rule, output="logodds")
        assert lo.score_steps([p], [st])[0] == pytest.approx(torch.log(want / (1 - want)).tolist(), abs=1e-5)
    # seed-004 names and aggregation
    prm = ProcessRewardModel.from_model(model, tokenizer, neutral="negative", aggregation="prod")
    assert prm.get_reward_for_problem_solution(p, "3*4=12\n2+12=14\nAnswer: 14\n") == \
        pytest.approx(float(probs[:, 2].prod()), abs=1e-6)
    assert prm.get_rewards_for_steps(st, problem=p) == pytest.approx(probs[:, 2].tolist(), abs=1e-6)


def test_token_backend_math_shepherd(tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=3)
    prm = ProcessRewardModel.from_model(lm, tokenizer, **token_convention("math-shepherd"))
    counter = ForwardCounter(lm.transformer)
    batch = prm.score_steps(PROMPTS, STEPS)
    assert counter.calls == 1
    counter.close()
    plus, minus = tokenizer.encode("+")[0], tokenizer.encode("-")[0]
    tag_id = tokenizer.encode(" ки")[-1]
    for p, st, row in zip(PROMPTS, STEPS, batch):
        text = p + MATH_SHEPHERD_FORMAT.join(st)
        assert text.count(" ки") == len(st)
        ids = tokenizer(text)["input_ids"]  # Math-Shepherd reads every tag position of the plain text
        logits = _logits(lm, ids)
        at_tags = [i for i, t in enumerate(ids) if t == tag_id]
        want = logits[at_tags][:, [plus, minus]].softmax(-1)[:, 0]
        assert row == pytest.approx(want.tolist(), abs=1e-5)
        assert prm.score_steps([p], [st])[0] == pytest.approx(row, abs=1e-5)


def test_token_backend_extra0_and_chat(tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=4)
    extra = ProcessRewardModel.from_model(lm, tokenizer, **token_convention("extra_0"))
    p, st = PROMPTS[0], STEPS[0]
    row = extra.score_steps([p], [st])[0]
    ids = sum((tokenizer(piece)["input_ids"] for piece in [p] + [s + "<extra_0>\n\n" for s in st]), [])
    extra_id = tokenizer.convert_tokens_to_ids("<extra_0>")
    logits = _logits(lm, ids)[[i for i, t in enumerate(ids) if t == extra_id]]
    plus, minus = tokenizer.encode("+")[0], tokenizer.encode("-")[0]
    assert row == pytest.approx(logits[:, [plus, minus]].softmax(-1)[:, 0].tolist(), abs=1e-5)

    chat = ProcessRewardModel.from_model(lm, tokenizer, **token_convention("chat"))
    counter = ForwardCounter(lm.transformer)
    batch = chat.score_steps(PROMPTS, STEPS)
    assert counter.calls == 1
    counter.close()
    for p, st, row in zip(PROMPTS, STEPS, batch):
        # RLHFlow style: one call per prefix, read the next-token logits after the generation prompt
        want = []
        for k in range(len(st)):
            conv = []
            for j in range(k + 1):
                conv.append({"role": "user", "content": f"{p} {st[0]}" if j == 0 else st[j]})
                if j < k:
                    conv.append({"role": "assistant", "content": "+"})
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            last = _logits(lm, tokenizer(text, add_special_tokens=False)["input_ids"])[-1]
            want.append(float(last[[plus, minus]].softmax(-1)[0]))
        assert row == pytest.approx(want, abs=1e-5)
    ids, pos = chat_layout(tokenizer, "Q", ["a", "b"], "+")
    assert [tokenizer.decode([ids[i + 1]]) for i in pos] == ["+", "+"]


def test_verification_backend_batched_left_padding(tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=5)
    prm = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", batch_size=4, shared_prefix=False)
    assert prm.settings.output == "logodds"
    counter = ForwardCounter(lm.transformer)
    batch = prm.score_steps(PROMPTS, STEPS)
    assert counter.calls == 3  # 10 queries in chunks of 4
    counter.close()
    yes, no = tokenizer.encode(" Yes")[0], tokenizer.encode(" No")[0]
    for p, st, row in zip(PROMPTS, STEPS, batch):
        queries = prm.verification_queries(p, st)
        assert all(p in q and s in q for q, s in zip(queries, st))
        assert all(prev in queries[-1] for prev in st[:-1])  # previous steps are context
        want = []
        for q in queries:  # seed 004: log_softmax at the last token, Yes minus No
            lp = torch.log_softmax(_logits(lm, tokenizer(q)["input_ids"])[-1], 0)
            want.append(float(lp[yes] - lp[no]))
        assert row == pytest.approx(want, abs=1e-5)
    prob = ProcessRewardModel.from_model(lm, tokenizer, backend="verification", output="prob")
    assert prob.score_steps(PROMPTS[:1], STEPS[:1])[0] == pytest.approx(
        torch.sigmoid(torch.tensor(batch[0])).tolist(), abs=1e-6)


def test_save_load_round_trip_every_backend(tokenizer, tmp_path):
    head = ProcessRewardModel.from_model(tiny_token_classifier(tokenizer, num_labels=3), tokenizer,
                                         neutral="half", output="logodds", step_format=StepFormat("\n\n"))
    lm = tiny_causal_lm(tokenizer, seed=6)
    models = {"head": head, "token": ProcessRewardModel.from_model(lm, tokenizer, **token_convention("math-shepherd")),
              "verification": ProcessRewardModel.from_model(lm, tokenizer, backend="verification",
                                                            prompt_template="{problem}|{previous_steps}|{step}?")}
    for name, prm in models.items():
        prm.save(tmp_path / name)
        cfg = json.loads((tmp_path / name / "reward_config.json").read_text())
        assert cfg["type"] == "process" and cfg["backend"] == name and cfg["format_version"] == 1
        assert (tmp_path / name / "model.safetensors").exists()
        for loaded in (load_reward_model(tmp_path / name, device="cpu"), ProcessRewardModel.load(tmp_path / name)):
            assert loaded.settings == prm.settings
            assert loaded.score_steps(PROMPTS, STEPS) == prm.score_steps(PROMPTS, STEPS)


def test_plain_directories_dispatch(tokenizer, tmp_path):
    save_tiny(tiny_token_classifier(tokenizer, num_labels=2), tokenizer, tmp_path / "cls")
    save_tiny(tiny_causal_lm(tokenizer), tokenizer, tmp_path / "lm")
    head = load_reward_model(tmp_path / "cls")
    assert isinstance(head, ProcessRewardModel) and head.backend == "head" and head.settings.num_labels == 2
    ver = load_reward_model(tmp_path / "lm")
    assert ver.backend == "verification"
    assert ProcessRewardModel.from_pretrained_lm(tmp_path / "lm").score_steps(PROMPTS, STEPS) == \
        ver.score_steps(PROMPTS, STEPS)
    assert ProcessRewardModel(tmp_path / "lm", backend="token").backend == "token"


@pytest.mark.parametrize("base_kind", ["token_classifier", "causal_lm"])
def test_lora_adapter_saved_alone_and_reloaded(tokenizer, tmp_path, base_kind):
    """Adapter-only save; reload rebuilds base + adapter + head (modules_to_save) from adapter_config.json."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForTokenClassification

    base_model = tiny_token_classifier(tokenizer, num_labels=3) if base_kind == "token_classifier" \
        else tiny_causal_lm(tokenizer)  # a plain LM base gets a new 3-class head, saved with the adapter
    base_dir = save_tiny(base_model, tokenizer, tmp_path / "base")
    base = AutoModelForTokenClassification.from_pretrained(base_dir, use_safetensors=True, num_labels=3)
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="TOKEN_CLS", r=4, target_modules=["c_attn"],
                                                      init_lora_weights=False))
    with torch.no_grad():  # "train": move every trainable tensor (LoRA and the modules_to_save head copy)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2 * torch.randn_like(param))
    assert any("classifier" in n for n, p in model.named_parameters() if p.requires_grad)
    prm = ProcessRewardModel.from_model(model, tokenizer, backend="head", neutral="half")
    prm.save(tmp_path / "lora")
    files = {p.name for p in (tmp_path / "lora").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    loaded = load_reward_model(tmp_path / "lora")
    assert loaded.settings.num_labels == 3
    assert flat(loaded.score_steps(PROMPTS, STEPS)) == pytest.approx(flat(prm.score_steps(PROMPTS, STEPS)), abs=1e-6)
    with loaded.model.disable_adapter():  # the adapter matters
        assert flat(loaded.score_steps(PROMPTS, STEPS)) != pytest.approx(flat(prm.score_steps(PROMPTS, STEPS)),
                                                                         abs=1e-4)


def test_unknown_saved_keys_are_logged(tokenizer, tmp_path, caplog):
    save_tiny(tiny_causal_lm(tokenizer), tokenizer, tmp_path / "m")
    write_reward_config(tmp_path / "m", "process", backend="token", colour="blue")
    with caplog.at_level("WARNING"):
        assert load_reward_model(tmp_path / "m").backend == "token"
    assert "ignoring unknown setting(s) ['colour']" in caplog.text


def test_errors_name_what_is_wrong(tokenizer, tmp_path):
    lm = tiny_causal_lm(tokenizer)
    lm.resize_token_embeddings(100)
    with pytest.raises(ValueError, match=r"mismatched tokenizer.*vocab size.*100 rows"):
        ProcessRewardModel.from_model(lm, tokenizer, backend="verification")
    small = tiny_token_classifier(tokenizer, n_positions=16)
    with pytest.raises(ValueError, match="solution 2 is .* tokens long, more than the model's maximum of 16"):
        ProcessRewardModel.from_model(small, tokenizer).score_steps(["Q\n"] * 3, [[], ["1"], ["1+1=2"] * 8])
    with pytest.raises(ValueError, match="maximum of 5"):
        ProcessRewardModel.from_model(small, tokenizer, max_length=5).score_steps(["Q\n"], [["1+1=2"] * 3])
    with pytest.raises(ValueError, match="3 labels but the settings say num_labels=2"):
        ProcessRewardModel.from_model(tiny_token_classifier(tokenizer, num_labels=3), tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="unknown backend"):
        ProcessRewardModel.from_model(small, tokenizer, backend="magic")
    for backend in ("head", "verification"):
        with pytest.raises(DataError, match=r"row 2.*field 'steps\[0\]'.*must not contain the step separator"):
            ProcessRewardModel.from_model(small if backend == "head" else tiny_causal_lm(tokenizer), tokenizer,
                                          backend=backend).score_steps(["a", "b", "c"], [["x"], [], ["y\nz"]])
    save_tiny(tiny_causal_lm(tokenizer), tokenizer, tmp_path / "m")
    write_reward_config(tmp_path / "m", "process", output="prob")
    with pytest.raises(DataError, match=r"reward_config.json.*field 'backend'.*missing key"):
        load_reward_model(tmp_path / "m")
    write_reward_config(tmp_path / "m", "process", backend="token", output="odds")
    with pytest.raises(DataError, match=r"reward_config.json: unknown output 'odds'"):
        load_reward_model(tmp_path / "m")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['colour'\]"):
        ProcessRewardModel(tmp_path / "lm_dir_not_needed", colour="blue")
    write_reward_config(tmp_path / "m", "nonsense")
    with pytest.raises(KeyError, match="bradley_terry, combined, ensemble.*outcome, process"):
        load_reward_model(tmp_path / "m")
    assert {"process", "outcome", "bradley_terry", "combined", "ensemble"} <= set(registered_types())


def test_saved_num_labels_must_match_checkpoint(tokenizer, tmp_path):
    save_tiny(tiny_token_classifier(tokenizer, num_labels=3), tokenizer, tmp_path / "m")
    write_reward_config(tmp_path / "m", "process", backend="head", num_labels=2)
    with pytest.raises(ValueError, match="the head has 3 labels but the settings say num_labels=2"):
        load_reward_model(tmp_path / "m")
