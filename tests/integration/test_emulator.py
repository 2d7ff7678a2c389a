"""The API emulator behaves as a kube-apiserver where Dockyard depends on it.

Why this module exists: the operator's integration tests are only as trustworthy as the API server
they run against. Each test here drives the emulator over real HTTP (aiohttp, the official
``kubernetes`` client, or Kopf itself) and checks one behaviour of the real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest

from tests.integration.emulator import (
    ApiError,
    Emulator,
    apply,
    create,
    delete,
    get,
    list_objects,
    patch,
    wait_for,
)

REGISTRIES = 'dockyard.dev/v1alpha1/registries'
DEPLOYMENTS = 'apps/v1/deployments'
CONFIGMAPS = 'v1/configmaps'
NS = 'ns1'


def registry(name: str = 'main', replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        'apiVersion': 'dockyard.dev/v1alpha1', 'kind': 'Registry',
        'metadata': {'name': name, 'namespace': NS},
        'spec': {'replicas': replicas, 'storage': {'pvc': {'size': '1Gi', 'accessModes': ['ReadWriteMany']}}},
        **extra,
    }


def configmap(name: str, data: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {'apiVersion': 'v1', 'kind': 'ConfigMap',
            'metadata': {'name': name, 'namespace': NS, **meta}, 'data': data or {'k': 'v'}}


def deployment(name: str = 'web', replicas: int = 1) -> dict[str, Any]:
    labels = {'app.kubernetes.io/name': 'dockyard-registry', 'app.kubernetes.io/instance': name}
    return {
        'apiVersion': 'apps/v1', 'kind': 'Deployment',
        'metadata': {'name': name, 'namespace': NS},
        'spec': {
            'replicas': replicas,
            'selector': {'matchLabels': labels},
            'template': {
                'metadata': {'labels': labels},
                'spec': {'containers': [
                    {'name': 'registry', 'image': 'dockyard:1', 'ports': [{'containerPort': 5000}]},
                    {'name': 'sidecar', 'image': 'busybox:1'},
                ]},
            },
        },
    }


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {'apiVersion': owner['apiVersion'], 'kind': owner['kind'], 'name': owner['metadata']['name'],
            'uid': owner['metadata']['uid'], 'controller': True, 'blockOwnerDeletion': True}


@contextlib.asynccontextmanager
async def watching(emulator: Emulator, path: str, **params: str) -> AsyncIterator[asyncio.Queue[Any]]:
    """Collect the events of a watch stream (read over HTTP) into a queue; None marks its end."""
    events: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        async with emulator.request('GET', path, params={'watch': 'true', **params}) as response:
            assert response.status == 200
            assert response.headers['Content-Type'].startswith('application/json')
            async for line in response.content:
                if line.strip():
                    events.put_nowait(json.loads(line))
        events.put_nowait(None)

    task = asyncio.create_task(read())
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def next_event(events: asyncio.Queue[Any], within: float = 5.0) -> Any:
    async with asyncio.timeout(within):
        return await events.get()


async def raw(emulator: Emulator, method: str, path: str, *, body: Any = None,
              content_type: str = 'application/json', **params: str) -> tuple[int, Any]:
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    async with emulator.request(method, path, params=params, data=data,
                                headers={'Content-Type': content_type}) as response:
        return response.status, await response.json(content_type=None)


# --- discovery -------------------------------------------------------------------------------------

async def test_discovery_lists_every_resource_the_operator_touches(emulator: Emulator) -> None:
    _, apis = await raw(emulator, 'GET', '/apis')
    groups = {group['name'] for group in apis['groups']}
    assert {'apps', 'policy', 'networking.k8s.io', 'batch', 'events.k8s.io', 'coordination.k8s.io',
            'dockyard.dev'} <= groups

    _, core = await raw(emulator, 'GET', '/api/v1')
    names = {entry['name'] for entry in core['resources']}
    assert {'secrets', 'configmaps', 'services', 'serviceaccounts', 'persistentvolumeclaims', 'events',
            'pods', 'namespaces'} <= names

    _, apps = await raw(emulator, 'GET', '/apis/apps/v1')
    assert {'deployments', 'deployments/status', 'deployments/scale'} <= {e['name'] for e in apps['resources']}

    _, dockyard = await raw(emulator, 'GET', '/apis/dockyard.dev/v1alpha1')
    entries = {entry['name']: entry for entry in dockyard['resources']}
    assert entries['registries']['kind'] == 'Registry'
    assert entries['registries']['namespaced'] is True
    assert {'get', 'list', 'watch', 'create', 'patch', 'update', 'delete'} <= set(entries['registries']['verbs'])
    assert {'registries/status', 'registries/scale', 'replicationpolicies',
            'replicationpolicies/status'} <= set(entries)
    assert 'replicationpolicies/scale' not in entries
    assert entries['registries/scale']['kind'] == 'Scale'
    assert entries['replicationpolicies']['kind'] == 'ReplicationPolicy'


async def test_namespaces_are_served_as_cluster_scoped_objects(emulator: Emulator) -> None:
    rv = emulator.resource_version
    async with watching(emulator, '/api/v1/namespaces', resourceVersion=rv) as events:
        created = await create(emulator, {'apiVersion': 'v1', 'kind': 'Namespace',
                                          'metadata': {'name': 'registries'}})
        assert 'namespace' not in created['metadata']
        event = await next_event(events)
        assert (event['type'], event['object']['metadata']['name']) == ('ADDED', 'registries')
    assert await get(emulator, 'v1/namespaces', 'registries') == created
    names = {ns['metadata']['name'] for ns in await list_objects(emulator, 'v1/namespaces')}
    assert names == {'default', 'registries'}


async def test_deleting_a_namespace_deletes_its_content_then_itself(emulator: Emulator) -> None:
    await create(emulator, {'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': NS}})
    await create(emulator, configmap('plain'))
    await create(emulator, configmap('held', finalizers=['dockyard.dev/finalizer']))
    other = await create(emulator, configmap('other', namespace='ns2'))

    terminating = await delete(emulator, 'v1/namespaces', NS)
    assert terminating is not None and terminating['status']['phase'] == 'Terminating'
    assert await get(emulator, CONFIGMAPS, 'plain', NS) is None
    with pytest.raises(ApiError) as err:
        await create(emulator, configmap('new'))
    assert err.value.status == 403 and err.value.reason == 'Forbidden'
    assert await get(emulator, 'v1/namespaces', NS) is not None  # held by the finalizer of 'held'

    await patch(emulator, CONFIGMAPS, 'held', {'metadata': {'finalizers': None}}, NS)
    assert await get(emulator, CONFIGMAPS, 'held', NS) is None
    assert await get(emulator, 'v1/namespaces', NS) is None
    assert await get(emulator, CONFIGMAPS, 'other', 'ns2') == other


async def test_verbs_a_resource_does_not_serve_are_not_allowed(emulator: Emulator) -> None:
    status, body = await raw(emulator, 'DELETE', '/api/v1/namespaces')  # no deletecollection there
    assert status == 405 and body['reason'] == 'MethodNotAllowed'


async def test_unregistered_resources_do_not_exist(emulator: Emulator) -> None:
    status, body = await raw(emulator, 'GET', '/apis/example.com/v1/namespaces/ns1/widgets')
    assert status == 404
    assert body['kind'] == 'Status' and body['reason'] == 'NotFound'


# --- metadata ------------------------------------------------------------------------------------

async def test_create_sets_server_metadata(emulator: Emulator) -> None:
    created = await create(emulator, registry(metadata={'name': 'main', 'namespace': NS,
                                                        'uid': 'forged', 'resourceVersion': '1'}))
    meta = created['metadata']
    assert uuid.UUID(meta['uid']).version == 4
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', meta['creationTimestamp'])
    assert isinstance(meta['resourceVersion'], str) and meta['resourceVersion'].isdigit()
    assert meta['generation'] == 1
    assert await get(emulator, REGISTRIES, 'main', NS) == created


async def test_generate_name_gives_a_unique_name(emulator: Emulator) -> None:
    first = await create(emulator, configmap('', generateName='cfg-'))
    second = await create(emulator, configmap('', generateName='cfg-'))
    assert first['metadata']['name'].startswith('cfg-')
    assert first['metadata']['name'] != second['metadata']['name']


async def test_resource_version_is_one_global_increasing_counter(emulator: Emulator) -> None:
    versions = [
        (await create(emulator, registry('a')))['metadata']['resourceVersion'],
        (await create(emulator, configmap('b')))['metadata']['resourceVersion'],
        (await patch(emulator, REGISTRIES, 'a', {'spec': {'replicas': 2}}, NS))['metadata']['resourceVersion'],
        (await create(emulator, deployment('c')))['metadata']['resourceVersion'],
    ]
    numbers = [int(v) for v in versions]
    assert numbers == sorted(numbers) and len(set(numbers)) == 4
    _, listing = await raw(emulator, 'GET', '/api/v1/namespaces/ns1/configmaps')
    assert listing['metadata']['resourceVersion'] == versions[-1]


async def test_generation_counts_changes_outside_metadata_and_status(emulator: Emulator) -> None:
    await create(emulator, registry())
    labelled = await patch(emulator, REGISTRIES, 'main', {'metadata': {'labels': {'team': 'a'}}}, NS)
    assert labelled['metadata']['generation'] == 1
    scaled = await patch(emulator, REGISTRIES, 'main', {'spec': {'replicas': 3}}, NS)
    assert scaled['metadata']['generation'] == 2
    reported = await patch(emulator, REGISTRIES, 'main', {'status': {'replicas': 3}}, NS, subresource='status')
    assert reported['metadata']['generation'] == 2
    assert int(reported['metadata']['resourceVersion']) > int(scaled['metadata']['resourceVersion'])

    # A ConfigMap has no status subresource: everything but metadata is its content.
    await create(emulator, configmap('cm'))
    changed = await patch(emulator, CONFIGMAPS, 'cm', {'data': {'k': 'other'}}, NS)
    assert changed['metadata']['generation'] == 2


# --- status subresource ------------------------------------------------------------------------

async def test_status_subresource_separates_spec_and_status_writes(emulator: Emulator) -> None:
    created = await create(emulator, registry(status={'endpoint': 'forged'}))
    assert 'status' not in created  # create drops status when the status subresource exists

    ignored = await patch(emulator, REGISTRIES, 'main', {'status': {'endpoint': 'forged'}}, NS)
    assert 'status' not in ignored
    assert ignored['metadata']['resourceVersion'] == created['metadata']['resourceVersion']

    body = await patch(emulator, REGISTRIES, 'main',
                       {'spec': {'replicas': 9}, 'status': {'endpoint': 'http://main.ns1:5000'}},
                       NS, subresource='status')
    assert body['status']['endpoint'] == 'http://main.ns1:5000'
    assert body['spec']['replicas'] == 1

    stored = await get(emulator, REGISTRIES, 'main', NS)
    assert stored is not None
    put_body = {**stored, 'spec': {**stored['spec'], 'replicas': 2}, 'status': {'endpoint': 'changed'}}
    replaced = await raw(emulator, 'PUT', '/apis/dockyard.dev/v1alpha1/namespaces/ns1/registries/main',
                         body=put_body)
    assert replaced[0] == 200
    assert replaced[1]['spec']['replicas'] == 2
    assert replaced[1]['status']['endpoint'] == 'http://main.ns1:5000'


# --- patch types ---------------------------------------------------------------------------------

async def test_merge_patch_deletes_keys_set_to_null(emulator: Emulator) -> None:
    await create(emulator, configmap('cm', {'a': '1', 'b': '2'}, labels={'x': '1', 'y': '2'}))
    body = await patch(emulator, CONFIGMAPS, 'cm', {'data': {'a': None, 'c': '3'},
                                                    'metadata': {'labels': {'x': None}}}, NS)
    assert body['data'] == {'b': '2', 'c': '3'}
    assert body['metadata']['labels'] == {'y': '2'}


async def test_strategic_merge_patch_merges_containers_by_name(emulator: Emulator) -> None:
    await create(emulator, deployment())
    body = await patch(emulator, DEPLOYMENTS, 'web', {'spec': {'template': {'spec': {'containers': [
        {'name': 'registry', 'image': 'dockyard:2', 'env': [{'name': 'A', 'value': '1'}]},
    ]}}}}, NS, content_type='application/strategic-merge-patch+json')
    containers = body['spec']['template']['spec']['containers']
    assert [(c['name'], c['image']) for c in containers] == [('registry', 'dockyard:2'), ('sidecar', 'busybox:1')]
    assert containers[0]['ports'] == [{'containerPort': 5000}]
    assert containers[0]['env'] == [{'name': 'A', 'value': '1'}]

    # The same body as a merge patch replaces the whole list.
    merged = await patch(emulator, DEPLOYMENTS, 'web', {'spec': {'template': {'spec': {'containers': [
        {'name': 'registry', 'image': 'dockyard:3'}]}}}}, NS)
    assert merged['spec']['template']['spec']['containers'] == [{'name': 'registry', 'image': 'dockyard:3'}]


async def test_strategic_merge_patch_is_refused_for_custom_resources(emulator: Emulator) -> None:
    await create(emulator, registry())
    with pytest.raises(ApiError) as err:
        await patch(emulator, REGISTRIES, 'main', {'spec': {'replicas': 2}}, NS,
                    content_type='application/strategic-merge-patch+json')
    assert err.value.status == 415


async def test_json_patch_applies_operations_and_fails_a_test_with_422(emulator: Emulator) -> None:
    created = await create(emulator, configmap('cm', {'a': '1'}, finalizers=['x/y']))
    rv = created['metadata']['resourceVersion']
    body = await patch(emulator, CONFIGMAPS, 'cm', [
        {'op': 'test', 'path': '/metadata/resourceVersion', 'value': rv},
        {'op': 'add', 'path': '/data/b', 'value': '2'},
        {'op': 'replace', 'path': '/data/a', 'value': 'one'},
        {'op': 'add', 'path': '/metadata/finalizers/-', 'value': 'dockyard.dev/finalizer'},
        {'op': 'remove', 'path': '/metadata/finalizers/0'},
    ], NS, content_type='application/json-patch+json')
    assert body['data'] == {'a': 'one', 'b': '2'}
    assert body['metadata']['finalizers'] == ['dockyard.dev/finalizer']

    with pytest.raises(ApiError) as err:
        await patch(emulator, CONFIGMAPS, 'cm', [
            {'op': 'test', 'path': '/metadata/resourceVersion', 'value': rv},  # stale now
            {'op': 'add', 'path': '/data/c', 'value': '3'},
        ], NS, content_type='application/json-patch+json')
    assert err.value.status == 422 and err.value.reason == 'Invalid'
    stored = await get(emulator, CONFIGMAPS, 'cm', NS)
    assert stored is not None and 'c' not in stored['data']


async def test_unknown_patch_type_is_rejected(emulator: Emulator) -> None:
    await create(emulator, configmap('cm'))
    with pytest.raises(ApiError) as err:
        await patch(emulator, CONFIGMAPS, 'cm', {'data': {}}, NS, content_type='text/plain')
    assert err.value.status == 415


# --- server-side apply ---------------------------------------------------------------------------

async def test_apply_requires_a_field_manager(emulator: Emulator) -> None:
    status, body = await raw(emulator, 'PATCH', '/api/v1/namespaces/ns1/configmaps/cm',
                             body=configmap('cm'), content_type='application/apply-patch+yaml')
    assert status == 400 and body['reason'] == 'BadRequest'


async def test_apply_creates_a_missing_object_and_records_ownership(emulator: Emulator) -> None:
    status, body = await raw(emulator, 'PATCH', '/api/v1/namespaces/ns1/configmaps/cm',
                             body=configmap('cm', {'a': '1'}, labels={'app': 'x'}),
                             content_type='application/apply-patch+yaml', fieldManager='dockyard')
    assert status == 201
    assert body['metadata']['generation'] == 1 and uuid.UUID(body['metadata']['uid'])
    [entry] = body['metadata']['managedFields']
    assert entry['manager'] == 'dockyard' and entry['operation'] == 'Apply'
    assert entry['apiVersion'] == 'v1' and entry['fieldsType'] == 'FieldsV1'
    assert entry['fieldsV1'] == {'f:data': {'f:a': {}}, 'f:metadata': {'f:labels': {'f:app': {}}}}


async def test_apply_accepts_yaml(emulator: Emulator) -> None:
    manifest = 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: ns1}\ndata: {a: "1"}\n'
    status, body = await raw(emulator, 'PATCH', '/api/v1/namespaces/ns1/configmaps/cm', body=manifest,
                             content_type='application/apply-patch+yaml', fieldManager='dockyard')
    assert status == 201 and body['data'] == {'a': '1'}


async def test_apply_removes_fields_the_manager_stopped_applying_and_keeps_others(emulator: Emulator) -> None:
    await apply(emulator, configmap('cm', {'a': '1', 'b': '2'}, labels={'mine': '1', 'old': '1'}),
                manager='dockyard')
    await patch(emulator, CONFIGMAPS, 'cm', {'data': {'theirs': 'x'},
                                             'metadata': {'labels': {'gitops': 'y'}}}, NS,
                params={'fieldManager': 'argocd'})
    body = await apply(emulator, configmap('cm', {'a': '1'}, labels={'mine': '1'}), manager='dockyard')
    assert body['data'] == {'a': '1', 'theirs': 'x'}
    assert body['metadata']['labels'] == {'mine': '1', 'gitops': 'y'}
    managers = {(e['manager'], e['operation']) for e in body['metadata']['managedFields']}
    assert managers == {('dockyard', 'Apply'), ('argocd', 'Update')}


async def test_apply_keeps_a_field_another_manager_still_owns(emulator: Emulator) -> None:
    await apply(emulator, configmap('cm', {'a': '1', 'shared': 's'}), manager='dockyard')
    await apply(emulator, configmap('cm', {'shared': 's'}), manager='flux')
    body = await apply(emulator, configmap('cm', {'a': '1'}), manager='dockyard')
    assert body['data'] == {'a': '1', 'shared': 's'}
    body = await apply(emulator, configmap('cm', {'other': 'o'}), manager='flux')
    assert body['data'] == {'a': '1', 'other': 'o'}


async def test_an_update_takes_over_the_fields_it_changes(emulator: Emulator) -> None:
    await apply(emulator, configmap('cm', {'a': '1', 'b': '2'}), manager='dockyard')
    body = await patch(emulator, CONFIGMAPS, 'cm', {'data': {'a': 'edited'}}, NS, params={'fieldManager': 'kubectl'})
    owners = {e['manager']: e['fieldsV1'] for e in body['metadata']['managedFields']}
    assert owners == {'dockyard': {'f:data': {'f:b': {}}}, 'kubectl': {'f:data': {'f:a': {}}}}


async def test_apply_to_the_status_subresource_owns_status_only(emulator: Emulator) -> None:
    await create(emulator, registry())
    body = await apply(emulator, registry(replicas=7, status={'endpoint': 'http://x'}), manager='dockyard',
                       subresource='status')
    assert body['status']['endpoint'] == 'http://x'
    assert body['spec']['replicas'] == 1
    [entry] = [e for e in body['metadata']['managedFields'] if e['operation'] == 'Apply']
    assert entry['subresource'] == 'status'
    assert list(entry['fieldsV1']) == ['f:status']


async def test_dry_run_stores_nothing(emulator: Emulator) -> None:
    mark = time.monotonic()
    status, body = await raw(emulator, 'POST', '/api/v1/namespaces/ns1/configmaps', body=configmap('cm'),
                             dryRun='All')
    assert status == 201 and body['metadata']['name'] == 'cm'
    assert await get(emulator, CONFIGMAPS, 'cm', NS) is None
    assert emulator.emitted(mark) == []


async def test_delete_collection_by_label(emulator: Emulator) -> None:
    await create(emulator, configmap('a', labels={'app.kubernetes.io/managed-by': 'dockyard'}))
    await create(emulator, configmap('b'))
    status, _ = await raw(emulator, 'DELETE', '/api/v1/namespaces/ns1/configmaps',
                          labelSelector='app.kubernetes.io/managed-by=dockyard')
    assert status == 200
    assert [o['metadata']['name'] for o in await list_objects(emulator, CONFIGMAPS, NS)] == ['b']


async def test_apply_merges_owner_references_by_uid(emulator: Emulator) -> None:
    first = await create(emulator, registry('one'))
    second = await create(emulator, registry('two'))
    await apply(emulator, configmap('cm', ownerReferences=[owner_ref(first)]), manager='dockyard')
    body = await apply(emulator, configmap('cm', ownerReferences=[owner_ref(second)]), manager='other')
    uids = {ref['uid'] for ref in body['metadata']['ownerReferences']}
    assert uids == {first['metadata']['uid'], second['metadata']['uid']}


async def test_apply_drops_an_owner_reference_and_the_last_label_it_stopped_applying(emulator: Emulator) -> None:
    owner = await create(emulator, registry())
    await apply(emulator, configmap('cm', labels={'a': '1'}, ownerReferences=[owner_ref(owner)]), manager='dockyard')
    body = await apply(emulator, configmap('cm'), manager='dockyard')
    assert 'ownerReferences' not in body['metadata']
    assert 'labels' not in body['metadata']
    assert body['data'] == {'k': 'v'}


async def test_apply_conflicts_on_fields_owned_by_others_unless_forced(emulator: Emulator) -> None:
    await apply(emulator, deployment(replicas=1), manager='dockyard')
    await patch(emulator, DEPLOYMENTS, 'web', {'spec': {'replicas': 5}}, NS, params={'fieldManager': 'kubectl'})

    with pytest.raises(ApiError) as err:
        await apply(emulator, deployment(replicas=1), manager='dockyard')
    assert err.value.status == 409 and err.value.reason == 'Conflict'
    assert err.value.body['details']['causes'][0]['field'] == '.spec.replicas'
    assert 'kubectl' in err.value.body['message']

    # The same value is no conflict: ownership is shared.
    same = await apply(emulator, {**deployment(replicas=5)}, manager='dockyard')
    assert same['spec']['replicas'] == 5

    forced = await apply(emulator, deployment(replicas=1), manager='dockyard', force=True)
    assert forced['spec']['replicas'] == 1
    owners = {e['manager']: e['fieldsV1'] for e in forced['metadata']['managedFields']}
    assert 'f:replicas' in owners['dockyard']['f:spec']
    assert 'kubectl' not in owners  # it owned nothing else


async def test_no_op_writes_change_nothing_and_send_no_events(emulator: Emulator) -> None:
    applied = await apply(emulator, registry(), manager='dockyard', force=True)
    rv = applied['metadata']['resourceVersion']
    path = '/apis/dockyard.dev/v1alpha1/namespaces/ns1/registries'
    async with watching(emulator, path, resourceVersion=rv) as events:
        mark = time.monotonic()
        again = await apply(emulator, registry(), manager='dockyard', force=True)
        merged = await patch(emulator, REGISTRIES, 'main', {'spec': {'replicas': 1}}, NS)
        put = await raw(emulator, 'PUT', f'{path}/main', body=again)
        status = await patch(emulator, REGISTRIES, 'main', {'status': {}}, NS, subresource='status')
        assert {again['metadata']['resourceVersion'], merged['metadata']['resourceVersion'],
                put[1]['metadata']['resourceVersion']} == {rv}
        assert emulator.emitted(mark) == [('MODIFIED', REGISTRIES, NS, 'main',
                                           status['metadata']['resourceVersion'])]  # status got its default
        # A real change as a marker: the first event after the no-ops must be this one.
        marker = await patch(emulator, REGISTRIES, 'main', {'metadata': {'labels': {'marker': '1'}}}, NS)
        first = await next_event(events)
        assert first['type'] == 'MODIFIED' and first['object']['status'] == {'conditions': []}
        second = await next_event(events)
        assert second['object']['metadata']['resourceVersion'] == marker['metadata']['resourceVersion']


# --- optimistic concurrency ----------------------------------------------------------------------

async def test_stale_resource_versions_conflict(emulator: Emulator) -> None:
    created = await create(emulator, registry())
    await patch(emulator, REGISTRIES, 'main', {'spec': {'replicas': 2}}, NS)
    stale = {**created, 'spec': {**created['spec'], 'replicas': 3}}
    status, body = await raw(emulator, 'PUT', '/apis/dockyard.dev/v1alpha1/namespaces/ns1/registries/main',
                             body=stale)
    assert status == 409 and body['reason'] == 'Conflict'
    with pytest.raises(ApiError) as err:
        await patch(emulator, REGISTRIES, 'main', {'metadata': {'resourceVersion': created['metadata'][
            'resourceVersion']}, 'spec': {'replicas': 4}}, NS)
    assert err.value.status == 409
    stored = await get(emulator, REGISTRIES, 'main', NS)
    assert stored is not None and stored['spec']['replicas'] == 2


async def test_put_requires_a_resource_version(emulator: Emulator) -> None:
    created = await create(emulator, configmap('cm'))
    body = {**created, 'metadata': {k: v for k, v in created['metadata'].items() if k != 'resourceVersion'}}
    status, reply = await raw(emulator, 'PUT', '/api/v1/namespaces/ns1/configmaps/cm', body=body)
    assert status == 422 and reply['reason'] == 'Invalid'


# --- deletion and garbage collection -------------------------------------------------------------

async def test_deleting_an_owner_collects_its_dependents_recursively(emulator: Emulator) -> None:
    owner = await create(emulator, registry())
    child = await create(emulator, deployment('main', replicas=1) | {
        'metadata': {'name': 'main', 'namespace': NS, 'ownerReferences': [owner_ref(owner)]}})
    grandchild = await create(emulator, configmap('main-config', ownerReferences=[owner_ref(child)]))
    unrelated = await create(emulator, configmap('unrelated'))
    retained = await create(emulator, {'apiVersion': 'v1', 'kind': 'PersistentVolumeClaim',
                                       'metadata': {'name': 'main-data', 'namespace': NS}, 'spec': {}})

    rv = emulator.resource_version
    async with watching(emulator, '/apis/apps/v1/deployments', resourceVersion=rv) as deployments, \
            watching(emulator, '/api/v1/configmaps', resourceVersion=rv) as configmaps:
        await delete(emulator, REGISTRIES, 'main', NS)
        event = await next_event(deployments)
        assert event['type'] == 'DELETED' and event['object']['metadata']['uid'] == child['metadata']['uid']
        event = await next_event(configmaps)
        assert event['type'] == 'DELETED' and event['object']['metadata']['uid'] == grandchild['metadata']['uid']

    assert await get(emulator, DEPLOYMENTS, 'main', NS) is None
    assert await get(emulator, CONFIGMAPS, 'main-config', NS) is None
    assert await get(emulator, CONFIGMAPS, 'unrelated', NS) == unrelated
    assert await get(emulator, 'v1/persistentvolumeclaims', 'main-data', NS) == retained


async def test_a_dependent_with_another_live_owner_only_loses_the_reference(emulator: Emulator) -> None:
    first = await create(emulator, registry('one'))
    second = await create(emulator, registry('two'))
    await create(emulator, configmap('shared', ownerReferences=[owner_ref(first), owner_ref(second)]))
    await delete(emulator, REGISTRIES, 'one', NS)
    shared = await get(emulator, CONFIGMAPS, 'shared', NS)
    assert shared is not None
    assert [ref['uid'] for ref in shared['metadata']['ownerReferences']] == [second['metadata']['uid']]
    await delete(emulator, REGISTRIES, 'two', NS)
    assert await get(emulator, CONFIGMAPS, 'shared', NS) is None


async def test_an_object_whose_owners_are_all_gone_is_collected(emulator: Emulator) -> None:
    owner = await create(emulator, registry())
    await delete(emulator, REGISTRIES, 'main', NS)
    # Written after its owner was deleted (a reconcile racing the deletion): collected at once.
    created = await create(emulator, configmap('late-child', ownerReferences=[owner_ref(owner)]))
    assert created['metadata']['uid']
    assert await get(emulator, CONFIGMAPS, 'late-child', NS) is None


async def test_an_owner_in_another_namespace_counts_as_absent(emulator: Emulator) -> None:
    owner = await create(emulator, registry())
    await create(emulator, {**configmap('elsewhere', ownerReferences=[owner_ref(owner)]),
                            'metadata': {'name': 'elsewhere', 'namespace': 'ns2',
                                         'ownerReferences': [owner_ref(owner)]}})
    assert await get(emulator, CONFIGMAPS, 'elsewhere', 'ns2') is None


async def test_orphan_propagation_keeps_dependents(emulator: Emulator) -> None:
    owner = await create(emulator, registry())
    await create(emulator, configmap('child', ownerReferences=[owner_ref(owner)]))
    await delete(emulator, REGISTRIES, 'main', NS, propagation_policy='Orphan')
    assert await get(emulator, CONFIGMAPS, 'child', NS) is not None


async def test_finalizers_hold_deletion_until_the_last_one_is_removed(emulator: Emulator) -> None:
    owner = await create(emulator, registry(metadata={'name': 'main', 'namespace': NS,
                                                      'finalizers': ['dockyard.dev/finalizer']}))
    await create(emulator, configmap('child', ownerReferences=[owner_ref(owner)]))
    deleting = await delete(emulator, REGISTRIES, 'main', NS)
    assert deleting is not None and deleting['metadata']['deletionTimestamp']
    assert await get(emulator, REGISTRIES, 'main', NS) is not None
    assert await get(emulator, CONFIGMAPS, 'child', NS) is not None

    with pytest.raises(ApiError) as err:
        await patch(emulator, REGISTRIES, 'main', {'metadata': {'finalizers': ['dockyard.dev/finalizer', 'x/y']}},
                    NS)
    assert err.value.status == 422

    await patch(emulator, REGISTRIES, 'main', {'metadata': {'finalizers': None}}, NS)
    assert await get(emulator, REGISTRIES, 'main', NS) is None
    assert await get(emulator, CONFIGMAPS, 'child', NS) is None


# --- scale subresource ---------------------------------------------------------------------------

async def test_registry_scale_subresource(emulator: Emulator) -> None:
    await create(emulator, registry(replicas=2))
    await patch(emulator, REGISTRIES, 'main', {'status': {'replicas': 2, 'selector': 'app=x'}}, NS,
                subresource='status')
    scale = await get(emulator, REGISTRIES, 'main', NS, subresource='scale')
    assert scale is not None
    assert scale['apiVersion'] == 'autoscaling/v1' and scale['kind'] == 'Scale'
    assert scale['spec'] == {'replicas': 2}
    assert scale['status'] == {'replicas': 2, 'selector': 'app=x'}

    async with watching(emulator, '/apis/dockyard.dev/v1alpha1/registries',
                        resourceVersion=emulator.resource_version) as events:
        scaled = await patch(emulator, REGISTRIES, 'main', {'spec': {'replicas': 4}}, NS, subresource='scale')
        assert scaled['spec']['replicas'] == 4
        event = await next_event(events)
        assert event['type'] == 'MODIFIED'
        assert event['object']['spec']['replicas'] == 4
        assert event['object']['metadata']['generation'] == 2


async def test_deployment_scale_through_the_kubernetes_client(emulator: Emulator, kubeconfig: Path) -> None:
    await create(emulator, deployment())
    client = await asyncio.to_thread(kubernetes.config.new_client_from_config, config_file=str(kubeconfig))
    apps = kubernetes.client.AppsV1Api(client)
    try:
        scale = await asyncio.to_thread(apps.read_namespaced_deployment_scale, 'web', NS)
        assert scale.spec is not None and scale.status is not None
        assert scale.spec.replicas == 1
        assert scale.status.selector == 'app.kubernetes.io/instance=web,app.kubernetes.io/name=dockyard-registry'
        await asyncio.to_thread(apps.patch_namespaced_deployment_scale, 'web', NS, {'spec': {'replicas': 3}})
        fresh = await asyncio.to_thread(apps.read_namespaced_deployment, 'web', NS)
        assert fresh.spec is not None and fresh.metadata is not None
        assert fresh.spec.replicas == 3 and fresh.metadata.generation == 2
    finally:
        await asyncio.to_thread(client.close)


# --- errors --------------------------------------------------------------------------------------

async def test_errors_are_status_objects(emulator: Emulator) -> None:
    status, body = await raw(emulator, 'GET', '/apis/dockyard.dev/v1alpha1/namespaces/ns1/registries/nope')
    assert status == 404
    assert body['kind'] == 'Status' and body['status'] == 'Failure'
    assert body['reason'] == 'NotFound' and body['code'] == 404
    assert body['details']['name'] == 'nope'

    await create(emulator, registry())
    status, body = await raw(emulator, 'POST', '/apis/dockyard.dev/v1alpha1/namespaces/ns1/registries',
                             body=registry())
    assert status == 409 and body['reason'] == 'AlreadyExists'

    status, body = await raw(emulator, 'POST', '/api/v1/namespaces/ns1/configmaps', body=configmap('Bad_Name'))
    assert status == 422 and body['reason'] == 'Invalid'

    status, body = await raw(emulator, 'POST', '/api/v1/namespaces/ns1/configmaps', body='{not json')
    assert status == 400 and body['reason'] == 'BadRequest'


async def test_kubernetes_client_sees_api_exceptions(emulator: Emulator, kubeconfig: Path) -> None:
    client = await asyncio.to_thread(kubernetes.config.new_client_from_config, config_file=str(kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    try:
        body = kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name='cm'), data={'a': '1'})
        created = await asyncio.to_thread(core.create_namespaced_config_map, NS, body)
        assert created.metadata is not None
        assert created.metadata.uid and created.metadata.resource_version
        with pytest.raises(kubernetes.client.ApiException) as err:
            await asyncio.to_thread(core.create_namespaced_config_map, NS, body)
        assert err.value.status == 409
        patched = await asyncio.to_thread(core.patch_namespaced_config_map, 'cm', NS, {'data': {'b': '2'}})
        assert patched.data == {'a': '1', 'b': '2'}
        created.data = {'c': '3'}  # a stale resourceVersion
        with pytest.raises(kubernetes.client.ApiException) as err:
            await asyncio.to_thread(core.replace_namespaced_config_map, 'cm', NS, created)
        assert err.value.status == 409
        await asyncio.to_thread(core.delete_namespaced_config_map, 'cm', NS)
        with pytest.raises(kubernetes.client.ApiException) as err:
            await asyncio.to_thread(core.read_namespaced_config_map, 'cm', NS)
        assert err.value.status == 404
    finally:
        await asyncio.to_thread(client.close)


# --- lists and watches ---------------------------------------------------------------------------

async def test_the_kubernetes_client_watches(emulator: Emulator, kubeconfig: Path) -> None:
    await create(emulator, configmap('a'))
    client = await asyncio.to_thread(kubernetes.config.new_client_from_config, config_file=str(kubeconfig))
    core = kubernetes.client.CoreV1Api(client)

    def first_events() -> list[tuple[str, str]]:
        stream = kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
            core.list_namespaced_config_map, NS, timeout_seconds=5)
        seen = []
        for event in stream:
            seen.append((event['type'], event['object'].metadata.name))
            if len(seen) == 1:
                break
        return seen

    try:
        assert await asyncio.to_thread(first_events) == [('ADDED', 'a')]
    finally:
        await asyncio.to_thread(client.close)


async def test_lists_filter_by_selectors_and_paginate(emulator: Emulator) -> None:
    for index in range(5):
        await create(emulator, configmap(f'cm{index}', labels={'parity': 'even' if index % 2 == 0 else 'odd'}))
    await create(emulator, configmap('other', namespace='ns2'))
    assert [o['metadata']['name'] for o in await list_objects(emulator, CONFIGMAPS, NS,
                                                                label_selector='parity=even')] == \
        ['cm0', 'cm2', 'cm4']
    assert len(await list_objects(emulator, CONFIGMAPS, NS, label_selector='parity in (even,odd)')) == 5
    assert len(await list_objects(emulator, CONFIGMAPS, NS, label_selector='!parity')) == 0
    assert len(await list_objects(emulator, CONFIGMAPS)) == 6

    _, page = await raw(emulator, 'GET', '/api/v1/namespaces/ns1/configmaps', limit='2')
    names = [o['metadata']['name'] for o in page['items']]
    while page['metadata'].get('continue'):
        _, page = await raw(emulator, 'GET', '/api/v1/namespaces/ns1/configmaps', limit='2',
                            **{'continue': page['metadata']['continue']})
        names += [o['metadata']['name'] for o in page['items']]
    assert names == ['cm0', 'cm1', 'cm2', 'cm3', 'cm4']

    _, selected = await raw(emulator, 'GET', '/api/v1/configmaps', fieldSelector='metadata.namespace=ns2')
    assert [o['metadata']['name'] for o in selected['items']] == ['other']


async def test_watch_from_a_resource_version_streams_only_later_events(emulator: Emulator) -> None:
    await create(emulator, configmap('before'))
    rv = emulator.resource_version
    await create(emulator, configmap('after'))
    await patch(emulator, CONFIGMAPS, 'before', {'data': {'k': 'new'}}, NS)
    async with watching(emulator, '/api/v1/namespaces/ns1/configmaps', resourceVersion=rv) as events:
        first, second = await next_event(events), await next_event(events)
        assert (first['type'], first['object']['metadata']['name']) == ('ADDED', 'after')
        assert (second['type'], second['object']['metadata']['name']) == ('MODIFIED', 'before')
        await delete(emulator, CONFIGMAPS, 'after', NS)
        third = await next_event(events)
        assert (third['type'], third['object']['metadata']['name']) == ('DELETED', 'after')
        assert int(third['object']['metadata']['resourceVersion']) > int(second['object']['metadata'][
            'resourceVersion'])


async def test_watch_without_a_resource_version_starts_with_the_current_state(emulator: Emulator) -> None:
    await create(emulator, configmap('a'))
    async with watching(emulator, '/api/v1/namespaces/ns1/configmaps', sendInitialEvents='true',
                        allowWatchBookmarks='true') as events:
        added, bookmark = await next_event(events), await next_event(events)
        assert (added['type'], added['object']['metadata']['name']) == ('ADDED', 'a')
        assert bookmark['type'] == 'BOOKMARK'
        assert bookmark['object']['metadata']['annotations'] == {'k8s.io/initial-events-end': 'true'}


async def test_a_watch_from_a_compacted_version_is_gone(emulator: Emulator) -> None:
    await create(emulator, configmap('a'))
    old = emulator.resource_version
    await create(emulator, configmap('b'))
    emulator.compact()
    async with watching(emulator, '/api/v1/configmaps', resourceVersion=old) as events:
        error = await next_event(events)
        assert error['type'] == 'ERROR'
        assert (error['object']['code'], error['object']['reason']) == (410, 'Expired')
        assert await next_event(events) is None  # the stream ends
    async with watching(emulator, '/api/v1/configmaps', resourceVersion=emulator.resource_version) as events:
        await patch(emulator, CONFIGMAPS, 'a', {'data': {'k': 'new'}}, NS)
        assert (await next_event(events))['type'] == 'MODIFIED'


async def test_watch_ends_after_its_timeout(emulator: Emulator) -> None:
    started = time.monotonic()
    async with watching(emulator, '/api/v1/configmaps', resourceVersion=emulator.resource_version,
                        timeoutSeconds='1') as events:
        assert await next_event(events) is None
    assert time.monotonic() - started < 4


async def test_label_selected_watch_sees_objects_enter_and_leave(emulator: Emulator) -> None:
    await create(emulator, configmap('cm'))
    async with watching(emulator, '/api/v1/namespaces/ns1/configmaps', resourceVersion=emulator.resource_version,
                        labelSelector='app.kubernetes.io/managed-by=dockyard') as events:
        await patch(emulator, CONFIGMAPS, 'cm', {'metadata': {'labels': {'app.kubernetes.io/managed-by': 'dockyard'}}},
                    NS)
        await patch(emulator, CONFIGMAPS, 'cm', {'metadata': {'labels': None}}, NS)
        assert (await next_event(events))['type'] == 'ADDED'
        assert (await next_event(events))['type'] == 'DELETED'


# --- schema, recording ---------------------------------------------------------------------------

async def test_crd_schema_defaults_and_prunes(emulator: Emulator) -> None:
    created = await create(emulator, {**registry(), 'spec': {'storage': {'emptyDir': {}}, 'bogus': True}})
    assert created['spec']['replicas'] == 1  # the schema's default
    assert 'bogus' not in created['spec']


async def test_seed_stores_an_object_with_its_status_without_a_request(emulator: Emulator) -> None:
    requests = len(emulator)  # a kmock root is the sequence of its requests
    seeded = emulator.seed(deployment() | {'status': {'replicas': 1, 'availableReplicas': 1}})
    assert len(emulator) == requests
    assert seeded['status'] == {'replicas': 1, 'availableReplicas': 1}
    assert await get(emulator, DEPLOYMENTS, 'web', NS) == seeded


async def test_custom_resources_are_validated_as_admission_would(emulator: Emulator) -> None:
    single = {'apiVersion': 'dockyard.dev/v1alpha1', 'kind': 'Registry', 'metadata': {'name': 'one', 'namespace': NS},
              'spec': {'replicas': 3, 'storage': {'emptyDir': {}}}}
    with pytest.raises(ApiError) as err:
        await create(emulator, single)
    assert err.value.status == 422 and err.value.reason == 'Invalid'
    assert [c['field'] for c in err.value.body['details']['causes']] == ['spec.replicas']
    assert 'shared storage' in err.value.body['message']
    assert await get(emulator, REGISTRIES, 'one', NS) is None

    await create(emulator, registry())
    with pytest.raises(ApiError) as err:  # a transition rule: sizes only grow
        await patch(emulator, REGISTRIES, 'main', {'spec': {'storage': {'pvc': {'size': '500Mi'}}}}, NS)
    assert err.value.status == 422 and 'cannot shrink' in err.value.body['message']
    grown = await patch(emulator, REGISTRIES, 'main', {'spec': {'storage': {'pvc': {'size': '2Gi'}}}}, NS)
    assert grown['spec']['storage']['pvc']['size'] == '2Gi'

    with pytest.raises(ApiError) as err:  # status writes meet the structural schema
        await patch(emulator, REGISTRIES, 'main', {'status': {'observedGeneration': 'two'}}, NS, subresource='status')
    assert err.value.status == 422
    assert err.value.body['details']['causes'][0]['field'] == 'status.observedGeneration'


async def test_validation_can_be_turned_off() -> None:
    async with Emulator(validate=False).serving() as emulator:
        created = await create(emulator, {**registry(replicas=3), 'spec': {'replicas': 3, 'storage': {'emptyDir': {}}}})
        assert created['spec']['replicas'] == 3


async def test_writes_lists_write_requests_after_a_mark(emulator: Emulator) -> None:
    await create(emulator, configmap('early'))
    mark = time.monotonic()
    await get(emulator, CONFIGMAPS, 'early', NS)
    await create(emulator, configmap('late'))
    await patch(emulator, CONFIGMAPS, 'late', {'data': {'k': 'v'}}, NS)  # a no-op, but still a request
    await delete(emulator, CONFIGMAPS, 'late', NS)
    assert emulator.writes(mark) == [
        ('POST', '/api/v1/namespaces/ns1/configmaps'),
        ('PATCH', '/api/v1/namespaces/ns1/configmaps/late'),
        ('DELETE', '/api/v1/namespaces/ns1/configmaps/late'),
    ]
    assert len(emulator.writes()) == 4


async def test_kmock_reactions_added_by_a_test_take_precedence(emulator: Emulator) -> None:
    await create(emulator, configmap('cm'))
    emulator['get /api/v1/namespaces/ns1/configmaps/cm'] << 503 << {'kind': 'Status', 'code': 503}
    with pytest.raises(ApiError) as err:
        await get(emulator, CONFIGMAPS, 'cm', NS)
    assert err.value.status == 503
    assert await list_objects(emulator, CONFIGMAPS, NS)  # everything else is still served


async def test_wait_for_reports_the_condition_on_timeout() -> None:
    with pytest.raises(TimeoutError, match='never true'):
        await wait_for(lambda: False, timeout=0.2, message='never true')
    assert await wait_for(lambda: 42, timeout=0.2) == 42


# --- Kopf ----------------------------------------------------------------------------------------

async def test_kopf_operator_runs_against_the_emulator(emulator: Emulator, kubeconfig: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry_ = kopf.OperatorRegistry()
    created: list[str] = []
    deleted: list[str] = []

    @kopf.on.login(registry=registry_)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # reads KUBECONFIG, as on a real cluster

    @kopf.on.startup(registry=registry_)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.watching.server_timeout = 10
        settings.persistence.finalizer = 'dockyard.dev/test-finalizer'
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix='dockyard.dev')
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix='dockyard.dev')

    @kopf.on.create('dockyard.dev', 'v1alpha1', 'registries', registry=registry_)
    def on_create(name: str, namespace: str | None, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        created.append(name)
        kopf.info(body, reason='Handled', message='on_create ran')
        patch.status['endpoint'] = f'http://{name}.{namespace}.svc:5000'

    @kopf.on.delete('dockyard.dev', 'v1alpha1', 'registries', registry=registry_)
    def on_delete(name: str, **_: Any) -> None:
        deleted.append(name)

    stop = asyncio.Event()
    ready = asyncio.Event()
    operator = asyncio.create_task(kopf.operator(registry=registry_, clusterwide=True, standalone=True,
                                                 stop_flag=stop, ready_flag=ready))
    try:
        await wait_for(ready.is_set, timeout=20, message='Kopf is ready')
        await create(emulator, registry())

        async def handled() -> dict[str, Any] | None:
            obj = await get(emulator, REGISTRIES, 'main', NS)
            annotations = (obj or {}).get('metadata', {}).get('annotations', {})
            done = obj and obj.get('status', {}).get('endpoint') and \
                'dockyard.dev/last-handled-configuration' in annotations
            return obj if done else None

        obj = await wait_for(handled, timeout=20, message='the create handler ran and patched the status')
        assert obj['status']['endpoint'] == 'http://main.ns1.svc:5000'
        assert obj['metadata']['finalizers'] == ['dockyard.dev/test-finalizer']
        assert created == ['main']
        await create(emulator, configmap('main-config', ownerReferences=[owner_ref(obj)]))

        async def posted() -> bool:  # Kopf posts its events in the background, with generateName
            events = await list_objects(emulator, 'v1/events', NS)
            return any('on_create' in event.get('message', '') for event in events)
        await wait_for(posted, timeout=10, message="Kopf's event about the handler")

        # Converged: nothing writes any more (no hot loop against the emulator), not even after
        # every watch stream was cut and Kopf resumed them from the versions it had seen.
        mark = time.monotonic()
        watches = len([r for r in emulator if r.params.get('watch') == 'true'])
        emulator.close_watches()
        await wait_for(lambda: len([r for r in emulator if r.params.get('watch') == 'true']) > watches,
                       timeout=10, message='Kopf watches again')
        with pytest.raises(TimeoutError):
            await wait_for(lambda: emulator.writes(mark), timeout=2, message='a write after convergence')
        assert created == ['main']
        resumed = [r for r in emulator if r.params.get('watch') == 'true'][watches:]
        assert all(r.params.get('resourceVersion') for r in resumed)

        await delete(emulator, REGISTRIES, 'main', NS)
        await wait_for(lambda: emulator.live(REGISTRIES, NS, 'main') is None, timeout=20,
                       message='the registry is gone (Kopf released its finalizer)')
        assert deleted == ['main']
        assert emulator.live(CONFIGMAPS, NS, 'main-config') is None  # collected with its owner
    finally:
        stop.set()
        await asyncio.wait_for(operator, timeout=30)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
