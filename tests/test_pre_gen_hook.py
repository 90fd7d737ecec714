"""The pre-gen hook, rendered with given answers and called in this process: each bad answer is
named in one line, in milliseconds. (test_hooks.py runs it through cookiecutter, end to end.)"""

import pytest

from conftest import render_hook

BAD_ANSWERS = [
    ("project_slug", "my-proj"),
    ("project_slug", "1abc"),
    ("project_slug", "has space"),
    ("project_slug", "class"),
    ("project_slug", "match"),
    ("project_slug", "email"),
    ("project_slug", "json"),
    ("project_slug", "torch"),
    ("project_slug", "plot_metrics"),  # a script of the project
    ("project_slug", "plumbing"),  # the project's package
    ("project_slug", "numpy"),
    ("project_slug", "data"),
    ("project_slug", "tests"),
    ("project_slug", "café"),
    ("project_slug", "sympy"),
    ("project_slug", "con"),
    ("project_slug", "NUL"),
    ("project_slug", "lpt1"),
    ("project_slug", "../escaped"),
    ("project_slug", "/tmp/absolute"),
    ("project_name", "bell\x07"),
    ("description", "nul\x00"),
    ("author", "escape\x1b[1m"),
    ("batch_size", "0"),
    ("batch_size", "sixty-four"),
    ("batch_size", "701"),  # more than the 700 training samples of the defaults
    ("num_workers", "-1"),
    ("num_workers", "2.5"),
    ("max_epochs", "0"),
    ("sample_shape", "3,x,32"),
    ("sample_shape", "3,0,32"),
    ("sample_shape", "3,,32"),
    ("sample_shape", ""),
    ("num_classes", "1"),
    ("num_classes", "5000"),
    ("_num_samples", "1"),
    ("_validation_fraction", "0"),
    ("_validation_fraction", "1"),
    ("_validation_fraction", "-0.2"),
    ("_validation_fraction", "a fifth"),
    ("_validation_fraction", "nan"),
    ("_test_fraction", "1"),
    ("_test_fraction", "-0.1"),
    ("_test_fraction", "a tenth"),
]


@pytest.mark.parametrize(("name", "value"), BAD_ANSWERS)
def test_a_bad_answer_is_named_in_one_line(capsys, name: str, value: str) -> None:
    hook = render_hook("pre_gen_project", **{name: value})

    assert hook.main() == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}={value!r}: "), err
    assert len(err.strip().splitlines()) == 1, err


def test_the_defaults_and_good_answers_pass_quietly(capsys) -> None:
    good = {"project_name": 'Ünïcödé «Projekt» "quoted"', "sample_shape": " 4, 16 "}
    small = {"_num_samples": "3", "num_classes": "3", "batch_size": "2", "num_workers": "0"}
    no_test = {"batch_size": "800", "_test_fraction": "0"}
    for given in ({}, good, {"batch_size": "700"}, small, no_test):
        assert render_hook("pre_gen_project", **given).main() == 0, given
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("given", "error"),
    [
        (
            {"_num_samples": "3", "_validation_fraction": "0.1"},
            "_validation_fraction='0.1': leaves a split of 3 samples empty",
        ),
        (
            {"_num_samples": "100", "batch_size": "81"},
            "batch_size='81': more than the 70 training samples: lower it or raise _num_samples",
        ),
        (
            {"_num_samples": "10", "_validation_fraction": "0.5", "_test_fraction": "0.5"},
            "_test_fraction='0.5': leaves no training sample of 10 with the validation split",
        ),
        ({"_num_samples": "20", "num_classes": "21"}, "num_classes='21': more classes than the 20"),
    ],
)
def test_answers_that_contradict_each_other_are_refused(capsys, given: dict, error: str) -> None:
    assert render_hook("pre_gen_project", **given).main() == 1
    assert f"error: {error}" in capsys.readouterr().err


def test_a_batch_larger_than_the_split_is_fine_without_sample_data() -> None:
    """The user brings their own data: its size is not known yet."""
    hook = render_hook("pre_gen_project", batch_size="701", _create_sample_data=False)
    assert hook.main() == 0


def test_every_bad_answer_is_named_at_once(capsys) -> None:
    hook = render_hook("pre_gen_project", batch_size="0", max_epochs="many", _num_samples="x")
    assert hook.main() == 1
    names = [line.split("=")[0] for line in capsys.readouterr().err.splitlines()]
    assert names == ["error: batch_size", "error: max_epochs", "error: _num_samples"]


def test_what_is_not_a_boolean_in_a_replay_file_is_refused(capsys) -> None:
    """cookiecutter turns `shuffle=no` on its command line into False itself; a hand-edited
    replay file reaches the hook as it is."""
    hook = render_hook("pre_gen_project")
    hook.ANSWERS |= {"shuffle": "maybe", "_git_init": 1}
    assert hook.main() == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: shuffle='maybe': must be true or false",
        "error: _git_init=1: must be true or false",
    ]


def test_a_tracker_not_among_the_choices_in_a_replay_file_is_refused(capsys) -> None:
    """cookiecutter itself refuses `tracker=MLflow` on its command line (test_hooks.py); a
    hand-edited replay file reaches the hook as it is."""
    hook = render_hook("pre_gen_project")
    hook.ANSWERS["tracker"] = "MLflow"  # the choices are lower case, as --tracker takes them
    assert hook.main() == 1
    assert capsys.readouterr().err == (
        "error: tracker='MLflow': must be one of none, mlflow, wandb\n"
    )


def test_answers_saved_by_an_older_template_say_what_to_rename(capsys) -> None:
    """Template 0.2 asked every question; 0.3 keeps the rarely changed ones private."""
    hook = render_hook("pre_gen_project")
    hook.ANSWERS["num_samples"] = hook.ANSWERS.pop("_num_samples")
    del hook.ANSWERS["_git_init"]
    assert hook.main() == 1
    assert capsys.readouterr().err == (
        "error: no answer for _num_samples, _git_init (saved by template 0.2 or older? rename"
        " num_samples to _num_samples)\n"
    )
