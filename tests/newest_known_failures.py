"""Tests that fail on the newest-shape ComfyUI tree today because the pack does not handle that tree yet (issue 17).

conftest.py marks each as a strict xfail when this process tests the `newest` tree (tests/comfy_trees.py), so the
suite stays green there while the list says exactly what is missing; once the pack handles one, its test passes,
the strict xfail turns into a failure, and its line here must go. tests/test_comfy_trees.py checks that every entry
names a test that exists (a renamed test must not leave a stale line). Measured with
`SPARSEFLOW_COMFY_TREE=newest python3 -m pytest -m comfyui` (21 failures, every other ComfyUI test passing).
"""

FUSED_PROLOGUE = ("the newest WanSelfAttention.forward (fingerprint bd5f25bf...) is not one the fused QK prologue "
                  "mirrors, so ComfyUI's own forward runs and nothing is counted as fused")
FUSED_BLOCK = ("the newest WanAttentionBlock.forward (fingerprint 253aca7a...) is not one the fused block passes "
               "mirror, so ComfyUI's own forward runs")
BENCH_HOOKS = "bench/e2e's timing hooks read q.shape, and the newest wrap_attn hands them an AttentionTensorContainer"
I2V_KWARGS = "the newest i2v cross-attention passes low_precision_attention to the override (a kwarg 0.3.64 lacks)"

_PROLOGUE = "tests/test_nodes_prologue.py::"
_BLOCK = "tests/test_nodes_block_norms.py::"
_VARIANTS = ("wan21_t2v-2", "wan21_i2v-1", "wan22_ti2v_5b-1", "wan21_vace-1")

NEWEST_XFAILS: dict[str, str] = {
    _PROLOGUE + "test_installed_comfyui_forward_is_one_the_prologue_mirrors_and_every_block_gets_it": FUSED_PROLOGUE,
    **{f"{_PROLOGUE}test_fused_prologue_gives_comfyuis_result_and_is_counted[{v}]": FUSED_PROLOGUE
       for v in _VARIANTS},
    _PROLOGUE + "test_triton_prologue_kernel_runs_inside_the_model": FUSED_PROLOGUE,
    _PROLOGUE + "test_auto_backend_on_cpu_keeps_comfyuis_prologue_and_says_why": FUSED_PROLOGUE,
    _BLOCK + "test_installed_comfyui_block_is_mirrored_and_each_option_sets_its_own_patches": FUSED_BLOCK,
    **{f"{_BLOCK}test_fused_blocks_give_comfyuis_result_and_are_counted[{v}]": FUSED_BLOCK for v in _VARIANTS},
    _BLOCK + "test_triton_block_kernel_runs_inside_the_model": FUSED_BLOCK,
    _BLOCK + "test_auto_backend_on_cpu_keeps_comfyuis_block_and_says_why": FUSED_BLOCK,
    _BLOCK + "test_a_module_output_the_kernel_does_not_take_runs_comfyuis_ops_for_that_add": FUSED_BLOCK,
    _BLOCK + "test_a_comfyui_block_sparseflow_does_not_know_is_left_alone": FUSED_BLOCK,
    _BLOCK + "test_bench_breakdown_times_the_fused_ffn_as_the_ffn": BENCH_HOOKS,
    "tests/test_bench_e2e.py::test_without_warmup_step_0_is_left_out_of_s_per_step": BENCH_HOOKS,
    "tests/test_bench_e2e.py::test_with_warmup_every_step_is_timed": BENCH_HOOKS,
    "tests/test_bench_e2e.py::test_a_saved_default_run_stands_in_for_default_in_a_later_run": BENCH_HOOKS,
    "tests/test_tiny_wan_fixture.py::test_attention_override_on_a_clone_sees_every_wan_attention_call[wan21_i2v]":
        I2V_KWARGS,
}
