"""What an FMHA failure implies when no mutant explains it: the kernel's reading of the facts
the diagnosis gathers (which outputs of this fixture are right, which outputs of the run's
other fixtures are right). Each hint states its premise and only what follows from it; none
names a bug the evidence cannot single out.

Loaded with the mutants of this folder (workbench.diagnose.hooks_for(stages/fmha)).
"""

from __future__ import annotations

from workbench.diagnose import evidence_hook

# fixtures whose V is generic enough that a right O means the weights on V are right
# (ones-v gives O = 1 for any normalised weights; single sees one V element)
WEIGHTS_SHOW_IN_O = {"random", "iota", "onehot-p", "onehot-logits", "uniform-logits", "large-logits"}


@evidence_hook
def this_fixture(ev) -> list[str]:
    o, lse = ev.right("o"), ev.right("lse")
    if o is None or lse is None or ev.variants.get("softmax") == "identity":
        return []
    if lse and not o:
        return [
            "LSE right, O wrong: the softmax statistics (LSE = row max + log of the row sum) are right; "
            "the error is on O's own path: which probability meets which V row (K or V tile/row order, "
            "the P handed to the PV MMA), V's columns, O's rescale when the row max grows, or O's final 1/l and store"
        ]
    if o and not lse:
        if ev.fixture not in WEIGHTS_SHOW_IN_O:
            return [f"O right, LSE wrong: {ev.fixture}'s O cannot show the weights on V, only LSE speaks here: "
                    "the logits or the softmax statistics (max, sum, rescale) or LSE's own formula/store are wrong"]
        return [
            "O right, LSE wrong: the weights on V are right (the logits are right up to a constant per row); "
            "the error is in LSE itself: how it is formed from the row max and sum (base e or 2, scale), "
            "its layout or its store"
        ]
    if not o and not lse:
        return [
            "O and LSE both wrong: the error reaches the softmax statistics: the logits (Q/K addressing, the KV "
            "tiles visited, scale, masking) or the max/sum/rescale, unless O and LSE have separate bugs"
        ]
    return []


@evidence_hook
def other_fixtures(ev) -> list[str]:
    hints = []
    if ev.right("o", "ones-v") is False:
        hints.append(
            "ones-v's O is wrong: with V = 1 any weights that sum to l give O = 1, so the P fed to the PV MMA "
            "does not sum to the l that O is divided by (1/l missing, O and l rescaled differently, keys masked "
            "in one and not the other) or O is not fully written (see its error map)"
        )
    if ev.right("o") is not False:
        return hints
    if ev.right("o", "ones-v") and ev.fixture != "ones-v":
        hints.append(
            "ones-v's O is right: with V = 1, each row's weights on V sum to the l that O is divided by and "
            "every O element is written; the error moves weight between keys or V columns, it does not lose or add it"
        )
    if ev.right("o", "onehot-p") and ev.fixture != "onehot-p":
        hints.append(
            "onehot-p's O is right: every query read the V row its one-hot P selects, so KV tile and row "
            "addressing and the P handed to the PV MMA are right; left: what one-hot rows cannot show, the "
            "softmax arithmetic (scale, exp/exp2, max, rescale, 1/l)"
        )
    if ev.right("o", "identity-softmax") and ev.fixture != "identity-softmax":
        hints.append(
            "identity-softmax's O is right: with a linear P the data path Q·Kᵀ -> P -> P·V, the KV tile loop and "
            "O's store are right (in the softmax=identity build); left: the exp-only code (max, exp/exp2 and "
            "log2(e), online rescale, 1/l)"
        )
    if ev.right("o", "single") and ev.fixture != "single":
        hints.append("single's O is right: the last KV tile is loaded and its V row meets its own P column")
    return hints
