"""The change sensor's run (`push_crm_changes`, here `World.push_changes`: the same scope, rules
and push, the real clients against the sandbox): what it decides about the contacts the CRM
changed is what a full sync would decide, and what its scope cannot prove is left to the next
full sync."""

from __future__ import annotations

from newsletter_pipelines_tests.world import World


def test_a_contact_whose_member_moved_out_of_sight_is_left_to_the_full_sync(world: World) -> None:
    """The CRM changed a contact's address while a person moved its member to an address the
    CRM does not know: the run reads the contact's addresses, not where the member went, so it
    decides nothing about the contact (it took the member for deleted); the full sync finds the
    member by its stable id and gives it the CRM's address."""
    world.sync()
    world.sync()  # learns the members' stable ids
    world.set(3, email="neu3@example.de")
    world.act("person3@example.de", "change_email", new_email="moved3@example.de")
    before = world.writes()
    done = world.push_changes({"3"})
    assert done is not None, "the scope closes"
    _, diff, _ = done
    assert "3" not in set(diff["crm_id"].astype(str)), diff[["action", "detail", "match_key"]]
    assert world.writes() == before
    full, _ = world.sync()
    row = full.set_index("match_key").loc["neu3@example.de"]
    assert (row.action, row.old_email) == ("update", "moved3@example.de")
    assert "neu3@example.de" in world.members() and "moved3@example.de" not in world.members()
