"""What a *person* does at a provider (outside the API): sign up, unsubscribe, get deleted,
bounce, complain, get a tag, change the address. Each action changes the state like the
provider's UI would and fires the webhooks the provider would fire (Mailchimp with source
`user` or `admin`, Brevo marketing events without `api_key_name`).

Every action is total: where it makes no sense for the current state it raises the provider's
error (`ProblemError` for Mailchimp, `BrevoError` for Brevo) before anything changes, and no
webhook fires. An unknown audience/list is a 404; a `tag`/`untag` without a tag and a
`change_email` without `new_email` are a 400; an action of the other provider is a 400.

Mailchimp (`mailchimp_person`; `email` not on the audience means no member, an archived one is
on it):

- `signup`: a hosted signup form. A new address (or an archived member, re-added under the
  API's compliance rules) becomes `subscribed` (source "Hosted Signup Form"); an existing member
  gets the names and `subscribed`. Fires `subscribe` (user). 400 for a permanently deleted
  address or an archived opt-out.
- `resubscribe`: the person comes back through the audience's own form. Unsubscribed,
  archived (whatever it was archived from), transactional, pending, unknown and permanently
  deleted addresses become `subscribed`; fires `subscribe` (user). 400 `Member In Compliance
  State` for a cleaned member (a bounced address cannot re-subscribe by form), 400 `Member
  Exists` for a subscribed one.
- `pending`: a hosted form on a double-opt-in audience: the same members as `resubscribe`
  (except pending ones) become `pending`, confirmation outstanding. No webhook (Mailchimp fires
  `subscribe` on confirmation, i.e. a later `resubscribe`). 400 for cleaned, subscribed, pending.
- `transactional`: a new address becomes a `transactional` member (no marketing consent, e.g.
  from a store). No webhook. 400 `Member Exists` for any member (archived ones too), 400 for a
  permanently deleted address.
- `unsubscribe`: the member (whatever its status, an archived one too) becomes `unsubscribed`;
  fires `unsubscribe` (user, action `unsub`).
- `archive`: an admin archives the member; the status behind the archive is kept
  (`archived_from`). Refused like `DELETE …/members/{hash}`: 405 for cleaned, pending and
  archived members. Fires `unsubscribe` (admin, action `delete`). Re-adding an archived member
  through the API (POST/PUT/batch subscribe, even with `update_existing: false`, since an
  archived member counts as absent there) keeps the compliance rule: an archived opt-out comes
  back as `subscribed`/`pending` only as a batch error (or a 400) `Member In Compliance State`.
- `delete`: permanent deletion (the address can never be imported again); fires `unsubscribe`
  (admin, action `delete`); returns `{}`.
- `clean`: the address bounced: the member (whatever its status) becomes `cleaned`; fires
  `cleaned` (admin, reason `hard`).
- `tag` / `untag`: an admin (de)activates `tag`. Tag names are case-insensitive: tagging "vip"
  on a member tagged "VIP" changes nothing, untagging "vip" removes "VIP"; a new tag takes the
  audience's spelling. No webhook (Mailchimp has no tag event); `last_changed` moves, which the
  nightly snapshot sees.
- `change_email`: the person (update-profile form) or an admin moves the member to `new_email`:
  its `id` becomes the new address's subscriber hash (`unique_email_id` follows the address),
  `contact_id`, status, merge fields and tags stay, `last_changed` moves. Fires `upemail` (user)
  with `data[list_id]`, `data[new_id]` (the new `id`), `data[new_email]`, `data[old_email]`.
  Refused as the API's `PATCH {"email_address"}` is, and for the member's own address: 400
  `Member Exists` when the new address is on the audience (an archived member or the member
  itself), 400 `Invalid Resource` for a member that is not subscribed or a bad address, 400
  `Forgotten Email Not Subscribed` for a permanently deleted one.
- `blacklist`, `list_unsubscribe`, `complain`: Brevo only, 400.
- `open`, `click`: Brevo only in the sandbox, 400 (Mailchimp fires no webhook for them).
- All but `signup`, `resubscribe`, `pending` and `transactional` need a member (404 otherwise).

Brevo (`brevo_person`; `list_id` is the list the person acts on; no person action leaves a list
id in both `listIds` and `listUnsubscribed`, though re-linking through the API can, and
`signup`/`resubscribe` then clear the unsubscription). The four ways Brevo blacklists a contact
(hard bounce, unsubscription, spam complaint, an admin's blocklisting) look alike in
`emailBlacklisted`; each is also recorded in the contact's `statistics`, as `GET
/contacts/{identifier}` shows them, and stays there when the blacklist is lifted. `unsubscribe`,
`clean` and `complain` react to campaign 0, in statistics and webhooks alike; `open` and `click`
react to a campaign the sandbox sent (`campaigns.send_brevo_campaign`):

- `signup`: a form: creates the contact if needed, sets the names, links the list (and takes it
  out of `listUnsubscribed`); the blacklist stays. Fires `listAddition`.
- `resubscribe`: the person re-subscribes through Brevo's own form: `emailBlacklisted` becomes
  false, the list leaves `listUnsubscribed` and joins `listIds` (the contact is created if
  missing). Fires `listAddition`. 400 when the contact is already subscribed to the list and not
  blacklisted.
- `blacklist`: an admin blocklists the contact in Brevo's app (`emailBlacklisted: true`) without
  any change to its lists; an unknown address becomes a contact outside every list,
  blacklisted. Recorded as an `adminUnsubscription` (time only). Fires `unsubscribed` with the
  contact's lists. 400 when already blacklisted.
- `list_unsubscribe`: unsubscription from this list only (the account feature "unsubscription
  per list"): the list leaves `listIds` and is appended to `listUnsubscribed`; the contact stays
  globally subscribed. Fires `unsubscribed` with the list. 404 for an unknown contact, 400 when
  the contact is not in the list. Decided from the v3 specification, whose examples never show a
  list in both arrays and whose list-contacts example only shows contacts having the list in
  `listIds`: `GET /contacts/{identifier}` (and `GET /contacts`) show such a contact with the list
  in `listUnsubscribed`; `GET /contacts/lists/{listId}/contacts` and the list's counters no
  longer include it, exactly as for a contact removed from the list.
- `unsubscribe`: the campaign's unsubscribe link: `emailBlacklisted: true`, a
  `userUnsubscription`; fires `unsubscribed` with the list.
- `delete` / `archive`: the contact is deleted; fires `contactDeleted`; returns `{}`.
- `clean`: hard bounce: `emailBlacklisted: true`, a `hardBounces` entry; fires `hardBounce`.
- `complain`: the person marks a campaign as spam: `emailBlacklisted: true`, a `complaints`
  entry; fires `spam`.
- `tag` / `untag`: the tag is added to / removed from the comma-separated `tags_attribute`;
  fires `contactUpdated`.
- `change_email`: the contact's `email` becomes `new_email` (any contact of the account, in the
  list or not); its `id`, lists, attributes and blacklist stay, `modifiedAt` moves. No webhook
  (Brevo's marketing events have none for an address change). 400 `duplicate_parameter` when
  another contact has the address, 400 `invalid_parameter` for a bad address.
- `open` / `click`: the person opens campaign `campaign_id`, or clicks `url` in it; fires
  `opened` / `click` (payloads in `brevo_campaigns`); nothing else changes. 400
  `missing_parameter` without `campaign_id` (or, for a click, `url`), 404 for an unknown
  campaign, 400 `invalid_parameter` when the campaign was not sent to `list_id` or not
  delivered to the contact (not a recipient, or bounced). A blacklisted recipient still can.
- `pending`, `transactional`: Mailchimp only, 400.
- All but `signup`, `resubscribe` and `blacklist` need a contact (404 otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from newsletter_pipelines.sandbox import brevo_campaigns
from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.brevo_rules import (
    BrevoError,
    check_address,
    contact_json,
    duplicate_email,
    stamp,
)
from newsletter_pipelines.sandbox.brevo_state import (
    LANGUAGE_NAME_ATTRIBUTES,
    BvAccount,
    BvContact,
    BvEvent,
)
from newsletter_pipelines.sandbox.core import now_iso
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError

if TYPE_CHECKING:
    from newsletter_pipelines.sandbox.engine import Sandbox

PersonAction = Literal[
    "signup",
    "resubscribe",
    "pending",
    "transactional",
    "unsubscribe",
    "blacklist",
    "list_unsubscribe",
    "archive",
    "delete",
    "clean",
    "complain",
    "tag",
    "untag",
    "change_email",
    "open",
    "click",
]
MAILCHIMP_ONLY = frozenset({"pending", "transactional"})
BREVO_ONLY = frozenset({"blacklist", "list_unsubscribe", "complain", "open", "click"})
CAMPAIGN_ID = 0
"""The Brevo campaign a person unsubscribes from, bounces or complains about."""


class PersonEvent(BaseModel):
    """One thing a person (or an account admin in the provider's UI) does to a contact."""

    list_id: str
    email: str
    action: PersonAction
    tag: str | None = None
    new_email: str | None = None
    campaign_id: int | None = None
    """Brevo `open` / `click`: the campaign (its `id` as the campaign send returned it)."""
    url: str | None = None
    """Brevo `click`: the link clicked."""
    first_name: str = ""
    last_name: str = ""
    api_key: str | None = None
    tags_attribute: str = "NEWSLETTER_TAGS"


def mailchimp_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    """Apply `event` to a Mailchimp audience; returns the member afterwards (or `{}`)."""
    try:
        return _mailchimp_person(sandbox, event)
    finally:
        sandbox.flush_webhooks()


def brevo_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    """Apply `event` to a Brevo list; returns the contact afterwards (or `{}`)."""
    try:
        return _brevo_person(sandbox, event)
    finally:
        sandbox.flush_webhooks()


def _mailchimp_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    if event.action in ("open", "click"):
        raise ProblemError(
            400,
            "Invalid Resource",
            f"{event.action!r} is emulated for Brevo only (Mailchimp fires no webhook for it).",
        )
    if event.action in BREVO_ONLY:
        raise ProblemError(
            400, "Invalid Resource", f"{event.action!r} is a Brevo action; Mailchimp has none."
        )
    if event.action in ("tag", "untag") and not event.tag:
        raise members.invalid("tags", "This value should not be blank.")
    if event.action == "change_email" and not event.new_email:
        raise ProblemError(
            400,
            "Invalid Resource",
            "change_email needs new_email, the member's new address.",
            [{"field": "new_email", "message": "This value should not be blank."}],
        )
    with sandbox.transaction():
        account = sandbox.state.mailchimp[event.api_key or _only(sandbox.state.mailchimp)]
        lst = account.lists.get(event.list_id)
        if lst is None:
            raise ProblemError(404, "Resource Not Found", f"no audience {event.list_id}")
        now = sandbox.now()
        key = members.subscriber_hash(event.email)
        member = lst.members.get(key)
        merge = {"FNAME": event.first_name, "LNAME": event.last_name}
        if event.action == "signup":
            if member is None or member.status == "archived":
                payload = {"email_address": event.email, "merge_fields": merge}
                member = members.create(
                    account, lst, payload, "subscribed", now, source="Hosted Signup Form"
                )
            else:
                member.status, member.last_changed = "subscribed", now_iso(now)
                member.merge_fields.update(merge)
            _mc_event(sandbox, lst, "subscribe", member, "user")
            return members.representation(lst, member, lst.segments)
        if event.action in ("resubscribe", "pending"):
            status = "subscribed" if event.action == "resubscribe" else "pending"
            member = members.rejoin(account, lst, event.email, status=status, merge=merge, now=now)
            if status == "subscribed":
                _mc_event(sandbox, lst, "subscribe", member, "user")
            return members.representation(lst, member, lst.segments)
        if event.action == "transactional":
            if member is not None:
                raise members.exists(event.email)
            payload = {"email_address": event.email, "merge_fields": merge}
            member = members.create(account, lst, payload, "transactional", now, source="Admin Add")
            return members.representation(lst, member, lst.segments)
        if member is None:
            raise ProblemError(404, "Resource Not Found", f"{event.email} is not on the audience")
        if event.action == "unsubscribe":
            member.status, member.last_changed = "unsubscribed", now_iso(now)
            member.archived_from = None
            member.unsubscribe_reason = "N/A (Unsubscribed by the contact)"
            _mc_event(sandbox, lst, "unsubscribe", member, "user", action="unsub", reason="manual")
        elif event.action == "archive":
            members.archive(lst, member, now)
            _mc_event(
                sandbox, lst, "unsubscribe", member, "admin", action="delete", reason="manual"
            )
        elif event.action == "delete":
            members.forget(lst, member)
            _mc_event(
                sandbox, lst, "unsubscribe", member, "admin", action="delete", reason="manual"
            )
            return {}
        elif event.action == "clean":
            members.clean(member, now)
            _mc_event(sandbox, lst, "cleaned", member, "admin", reason="hard")
        elif event.action == "change_email":
            old_email = member.email_address
            members.change_email(lst, member, str(event.new_email))
            member.last_changed = now_iso(now)
            sandbox.mailchimp_event(
                lst, "upemail", members.upemail_data(lst, member, old_email), "user"
            )
        else:
            status = "active" if event.action == "tag" else "inactive"
            members.set_tags(member, [{"name": event.tag, "status": status}], now, lst.segments)
            members.register_tags(account, lst, member)
        return members.representation(lst, member, lst.segments)


def _mc_event(
    sandbox: Sandbox, lst: Any, kind: str, member: Any, source: str, **extra: Any
) -> None:
    sandbox.mailchimp_event(lst, kind, members.event_data(lst, member, **extra), source)


def _brevo_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    if event.action in MAILCHIMP_ONLY:
        raise BrevoError(
            400, "invalid_parameter", f"{event.action!r} is a Mailchimp action; Brevo has none"
        )
    if event.action in ("tag", "untag") and not event.tag:
        raise BrevoError(400, "missing_parameter", "tag is missing")
    if event.action == "change_email" and not event.new_email:
        raise BrevoError(400, "missing_parameter", "new_email is missing")
    if event.action in ("open", "click") and event.campaign_id is None:
        raise BrevoError(400, "missing_parameter", "campaign_id is missing")
    if event.action == "click" and not event.url:
        raise BrevoError(400, "missing_parameter", "url is missing")
    with sandbox.transaction():
        account = sandbox.state.brevo[event.api_key or _only(sandbox.state.brevo)]
        list_id = int(event.list_id) if event.list_id.isdigit() else -1
        if list_id not in account.lists:
            raise BrevoError(404, "document_not_found", "List ID does not exist")
        now = sandbox.now()
        contact = account.by_email(event.email)
        common = {"email": event.email, "key": "", "date": stamp(now), "ts": int(now)}
        campaign = {
            "camp_id": CAMPAIGN_ID,
            "date_event": stamp(now),
            "ts_event": int(now),
            **common,
        }
        unsubscribed = {"event": "unsubscribed", **campaign}
        if event.action in ("signup", "resubscribe"):
            resubscribe = event.action == "resubscribe"
            if contact is None:
                check_address(event.email)
            elif resubscribe and brevo_campaigns.subscribed_to(contact, list_id):
                raise BrevoError(
                    400, "duplicate_parameter", "Contact is already subscribed to the list"
                )
            contact = contact or _new_contact(account, event.email, now)
            _set_names(account, contact, event, keep_blank=resubscribe)
            if resubscribe:
                contact.emailBlacklisted = False
            _link(account, contact, list_id)
            contact.modifiedAt = now
            sandbox.brevo_event(
                account, "listAddition", {"event": "list_addition", "list_id": [list_id], **common}
            )
            return contact_json(contact)
        if event.action == "blacklist":
            if contact is None:
                check_address(event.email)
            elif contact.emailBlacklisted:
                raise BrevoError(400, "invalid_parameter", "Contact is already blacklisted")
            contact = contact or _new_contact(account, event.email, now)
            contact.emailBlacklisted, contact.modifiedAt = True, now
            contact.statistics.unsubscriptions.adminUnsubscription.append(BvEvent(eventTime=now))
            payload = {**unsubscribed, "list_id": list(contact.listIds)}
            sandbox.brevo_event(account, "unsubscribed", payload)
            return contact_json(contact)
        if contact is None:
            raise BrevoError(404, "document_not_found", "Contact does not exist")
        if event.action == "list_unsubscribe":
            if list_id not in contact.listIds:
                raise BrevoError(400, "invalid_parameter", "Contact is not in the list")
            account.unlink(contact, list_id)
            contact.listUnsubscribed.append(list_id)
            contact.modifiedAt = now
            sandbox.brevo_event(account, "unsubscribed", {**unsubscribed, "list_id": [list_id]})
        elif event.action == "unsubscribe":
            contact.emailBlacklisted, contact.modifiedAt = True, now
            contact.statistics.unsubscriptions.userUnsubscription.append(_campaign_event(now))
            sandbox.brevo_event(account, "unsubscribed", {**unsubscribed, "list_id": [list_id]})
        elif event.action in ("delete", "archive"):
            account.delete(contact)
            sandbox.brevo_event(
                account,
                "contactDeleted",
                {"event": "contact_deleted", "list_id": contact.listIds, **common},
            )
            return {}
        elif event.action == "clean":
            brevo_campaigns.hard_bounce(contact, now, CAMPAIGN_ID)
            sandbox.brevo_event(
                account, "hardBounce", {"event": "hard_bounce", "reason": "unknown user", **common}
            )
        elif event.action == "complain":
            contact.emailBlacklisted, contact.modifiedAt = True, now
            contact.statistics.complaints.append(_campaign_event(now))
            sandbox.brevo_event(account, "spam", {"event": "spam", **campaign})
        elif event.action == "change_email":
            _move(account, contact, str(event.new_email), now)
        elif event.action in ("open", "click"):
            brevo_campaigns.react(
                sandbox,
                account,
                contact,
                list_id=list_id,
                campaign_id=event.campaign_id or 0,
                action=event.action,
                url=event.url,
            )
        else:
            tags = [
                t for t in str(contact.attributes.get(event.tags_attribute, "")).split(",") if t
            ]
            tags = sorted(
                {*tags, event.tag or ""} if event.action == "tag" else set(tags) - {event.tag}
            )
            contact.attributes[event.tags_attribute] = ",".join(tags)
            contact.modifiedAt = now
            sandbox.brevo_event(
                account,
                "contactUpdated",
                {"event": "contact_updated", "content": [contact.attributes], **common},
            )
        return contact_json(contact)


def _campaign_event(now: float) -> BvEvent:
    """A statistics entry for the person's reaction to the campaign, now."""
    return BvEvent(campaignId=CAMPAIGN_ID, eventTime=now)


def _move(account: BvAccount, contact: BvContact, new_email: str, now: float) -> None:
    """Give the contact a new address, unless it is bad or another contact's."""
    check_address(new_email)
    other = account.by_email(new_email)
    if other is not None and other.id != contact.id:
        raise duplicate_email()
    account.rename(contact, new_email)
    contact.modifiedAt = now


def _new_contact(account: BvAccount, email: str, now: float) -> BvContact:
    contact = BvContact(id=account.new_id(), email=email, createdAt=now, modifiedAt=now)
    account.add_contact(contact)
    return contact


def _set_names(
    account: BvAccount, contact: BvContact, event: PersonEvent, *, keep_blank: bool
) -> None:
    """The names the person typed; `keep_blank` leaves a name alone when none was typed."""
    first, last = LANGUAGE_NAME_ATTRIBUTES[account.language]
    for attribute, value in ((first, event.first_name), (last, event.last_name)):
        if value or not keep_blank:
            contact.attributes[attribute] = value


def _link(account: BvAccount, contact: BvContact, list_id: int) -> None:
    """Subscribe the contact to the list: in `listIds`, out of `listUnsubscribed`."""
    if list_id in contact.listUnsubscribed:
        contact.listUnsubscribed.remove(list_id)
    if list_id not in contact.listIds:
        account.link(contact, list_id)


def _only(accounts: dict[str, Any]) -> str:
    if len(accounts) != 1:
        raise ValueError("several accounts: name the api_key")
    return next(iter(accounts))
