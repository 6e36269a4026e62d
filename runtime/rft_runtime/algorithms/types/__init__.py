"""One file per algorithm family, each class an algorithm type (`@register`): registry.py imports every
module here, so a new algorithm is a new file, with nothing to add elsewhere.

A new file names the parts it is made of (registered advantage functions and policy losses) and says what
only it checks; a new advantage function goes in with it (advantages.register_advantage), a new policy
loss too (policy_losses.register_policy_loss), its torch term in algorithms.terms.
"""
