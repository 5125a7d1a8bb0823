from xmodal.tools import recipe_list


def test_readme_lists_every_recipe():
    text = (recipe_list.ROOT / "README.md").read_text()
    for path in (recipe_list.ROOT / "recipes").glob("*/*.yaml"):
        assert path.relative_to(recipe_list.ROOT).as_posix() in text, f"{path} missing: run python -m xmodal.tools.recipe_list"


def test_summary_is_the_first_sentence(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("# First line of the\n# description. Second sentence | here.\nname: x\n# not this\n")
    assert recipe_list.summary(f) == "First line of the description."
    readme = f"a\n{recipe_list.BEGIN}\nold\n{recipe_list.END}\nb\n"
    assert recipe_list.splice(readme, "NEW") == "a\nNEW\nb\n"
