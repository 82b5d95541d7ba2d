/*
 * SpeculativeFault.pml -- the speculative page fault against mprotect and munmap.
 *
 * Abstracts (Swift sources of this repository):
 *   Sources/Shootdown/AddressSpace/AddressSpace+SpeculativeFault.swift
 *       AddressSpace.speculativeFault(_:_:)          -> proctype Faulter
 *   Sources/Shootdown/Sync/SeqCount.swift
 *       SeqCount.readBegin(), hasChanged(since:), writeBegin(), writeEnd(), rawWriteBegin()
 *   Sources/Shootdown/VMA/VMA.swift
 *       VMA.beginWrite(), endWrite(), markRemoved(), setAttributes(protection:flags:)
 *   Sources/Shootdown/PageTable/PageTable.swift
 *       PageTable.existingPMDTable(for:), pteLock(_:); for the variants that install tables:
 *       pmdTable(for:), installTable(in:at:), pteTable(in:at:entry:)
 *   Sources/Shootdown/PageTable/PageTable+RangeWalk.swift
 *       PageTable.forEachLockedLeafRun(...), zap(...), zapEntries(...)
 *   Sources/Shootdown/PageTable/PageTable+Modify.swift
 *       PageTable.changeProtection(from:to:protection:flush:)
 *   Sources/Shootdown/PageTable/PageTable+Free.swift
 *       PageTable.freeTables(from:to:floor:ceiling:retire:)
 *   Sources/Shootdown/RCU/RetireList.swift
 *       RetireList.retire(table:level:), submit(), reclaim()  (freed after a grace period)
 *   Sources/Shootdown/AddressSpace/AddressSpace+VMAEdit.swift
 *       VMAEdit.touch(_:), remove(_:), publish(), finish()
 *   Sources/Shootdown/AddressSpace/AddressSpace+Protect.swift
 *       AddressSpace.protect(address:length:protection:), changeVMAs(...)  -> Writer, first part
 *   Sources/Shootdown/AddressSpace/AddressSpace+Map.swift
 *       AddressSpace.unmapLocked(_:_:edit:), map(...)                       -> Writer, rest
 *
 * What is modelled. One page inside VMA V (read-write), one PMD slot covering it, and the
 * page's entry in every PTE table that can ever hang in that slot. Two faulters, each making
 * FAULTS speculative fault attempts (read or write, chosen freely), race one writer that holds
 * the mmap write lock throughout and runs, in order:
 *   - optionally mprotect(V, read-only): write section (count odd, seq_cst RMW), protection
 *     stored, changeProtection (PMD slot loaded seq_cst, split lock, write bit dropped), end of
 *     the write section (count even);
 *   - munmap(V): write section entered and V marked removed (count odd for good), the index
 *     published without V, the page zapped under the split lock (PMD slot loaded seq_cst),
 *     freeTables under the space lock (slot exchanged to 0, table retired), finish;
 *   - optionally mmap of a fresh read-write VMA V2 over the hole (index published);
 *   - reclamation of retired tables after a grace period (waits until each faulter has been
 *     seen outside its RCU read section).
 * The initial state is one of: no PTE table; a table whose entry is empty, read-only or
 * writable. A faulter follows the Swift code step by step: index lookup; readBegin (odd ->
 * abort); protection check (a denied access ends the attempt: segfault or abort, nothing is
 * installed); PMD slot load, and, if empty, an abort to the classic path (what the Swift code
 * does; the OLD_TABLE_INSTALL and FIX_TABLE_LEAK_UNDO variants instead CAS a fresh table into
 * the slot, the loser's block never published); entry load; a present entry ends the attempt (spurious
 * fault or copy-on-write abort: the accessed/dirty store of the spurious path writes back the
 * re-validated value and is not modelled); split lock (tryLock plus bounded spin is modelled as
 * a blocking lock: giving up only removes behaviours); re-validation: PMD slot still points at
 * this table, VMA count unchanged, entry unchanged; install (read -> read-only zero page,
 * write -> writable); unlock. Each attempt runs inside an RCU read section.
 * Not modelled: VMA bounds (no split or merge happens, so the bounds check cannot fail),
 * huge pages, shared mappings, the upper levels (the PUD and PMD tables that pmdTable(for:)
 * installs by CAS race freeTables the same way as the PTE table modelled here), the classic
 * fault path (it holds the mmap lock).
 *
 * Memory model. Spin interleaves atomic steps, i.e. it checks sequential consistency. In the
 * protocol the Swift code implements the faulter never writes the PMD slot, and everything it
 * relies on is ordered by the split lock (entry stores, the zap, the re-check of the count under
 * the lock after the writer made it odd before taking that lock) or by acquire/release pairs
 * (index publication, tables and entries published with release), which is what sequential
 * consistency gives here. The pre-fix protocol (OLD_TABLE_INSTALL) needed more: its CAS of a
 * table into an empty slot raced the zap's load of the slot, a store-buffering shape that only
 * sequentially consistent accesses excluded.
 *
 * Properties (assertions):
 *   P1  no entry is installed into a PTE table that is not live (detached or freed), and no
 *       entry is installed in V's range once munmap's zap has passed that range;
 *   P2  once the mprotect to read-only has completed, no writable entry exists for V while V
 *       is mapped (monitor process);
 *   P3  when everything has finished and the range is still unmapped (no V2), no present entry
 *       remains in the range, and no retired/freed table holds a present entry;
 *   P4  no faulter touches a freed table (RCU);
 *   P5  when everything has finished and the range is still unmapped, no page table remains in
 *       the PMD slot. This failed for the pre-fix protocol (OLD_TABLE_INSTALL): a faulter that
 *       found V just before the removal was published could CAS a fresh table into the slot
 *       after freeTables cleared it; its validation aborted, but the table stayed.
 *
 * Protocol variants (default: the faulter never installs a PTE table; an empty PMD slot aborts
 * the speculative attempt and the classic path, under the mmap read lock, installs it -- what
 * AddressSpace.speculativeFault does):
 *   OLD_TABLE_INSTALL    the pre-fix protocol: the faulter CASes a fresh table into an empty
 *                        slot. Expected to fail P5 (the table leak).
 *   FIX_TABLE_LEAK_UNDO  the alternative fix that was not chosen: the faulter installs, but after
 *                        an aborted validation it removes the table it installed itself if the
 *                        table is still empty and still in the slot, holding the space lock
 *                        (which serialises with freeTables) and the table's split lock (which
 *                        excludes other faulters' validation), and retires it; it is freed after
 *                        a grace period of its own (once the other faulter has been seen outside
 *                        its read section).
 *
 * Mutants (each must make spin report an error):
 *   MUTANT_NO_REVALIDATE      the VMA sequence count is not re-checked under the split lock:
 *                             a fault validated against a VMA that mprotect or munmap changed
 *                             installs anyway (P1 or P2).
 *   MUTANT_NO_PMD_RECHECK     the PMD slot is not re-checked under the split lock. In the
 *                             current protocol this check is implied by the sequence check
 *                             (only munmap detaches tables, and it always changes the count of
 *                             the VMA that covered the table), so it is run together with
 *                             FIX_TABLE_LEAK_UNDO, whose undo detaches a table without any VMA
 *                             change: a faulter of V2 then installs into the detached table (P1).
 *   MUTANT_NO_ODD_ABORT       the faulter does not abort on an odd snapshot: a snapshot taken
 *                             inside mprotect's write section validates against itself (P2), and
 *                             one of a removed VMA stays valid forever (P1).
 *   MUTANT_NO_GRACE_PERIOD    retired tables are freed without waiting for a grace period (P4).
 *   MUTANT_UNDO_PMD_LOCK_ONLY with FIX_TABLE_LEAK_UNDO: the undo holds the PMD table's split
 *                             lock (pmdLock(_:)) instead of the space lock. freeTables holds
 *                             only the space lock and loads the slot before exchanging it, so
 *                             both can retire the same table (double free), or freeTables can
 *                             retire the null entry it exchanged out.
 */

/* The protocol of the Swift code unless a variant is asked for; P5 is always checked. */
#if !defined(OLD_TABLE_INSTALL) && !defined(FIX_TABLE_LEAK_UNDO)
#define FIX_TABLE_LEAK
#endif
#define CHECK_NO_TABLE_LEAK

#ifndef FAULTS
#define FAULTS 2
#endif

#define NT (2 + 2 * FAULTS) /* table ids: 0 none, 1 initial, 2.. one fresh block per attempt */
#define T_INIT 1

#define NONE 0          /* leaf entry values (abstract) */
#define RO   1
#define RW   2

#define FREE    0       /* table states */
#define LIVE    1
#define RETIRED 2
#define FREED   3

#define V  1            /* VMA ids */
#define V2 2

byte pmd;               /* the PMD slot: 0 or a table id */
byte pte[NT];           /* the page's entry in each table */
bool ptl[NT];           /* each table's split lock */
byte tstate[NT];
bool spaceLock;         /* page_table_lock: freeTables */
bool pmdLock;           /* the PMD table's split lock (MUTANT_UNDO_PMD_LOCK_ONLY) */

byte idx;               /* published index: VMA covering the page, 0 none */
byte seq[3];            /* VMA sequence counts */
byte prot[3];           /* VMA protection: RO or RW */
bool removed[3];

bool rcu[2];            /* faulter inside its RCU read section */
bool protDone;          /* ghost: mprotect(V, read-only) completed */
bool zapDone;           /* ghost: munmap's zap of V's range has passed */
bool v2Mapped;          /* ghost: V2 was mapped over the hole */
byte finished;

inline lock(l)   { atomic { l == 0 -> l = 1 } }
inline unlock(l) { l = 0 }

proctype Faulter(byte f)
{
    byte attempt = 0, v, s, t, e, fresh, undone;
    bool write, mine;

    do
    :: attempt == FAULTS -> break
    :: else ->
        /* Each atomic block below holds one access to shared state plus the local decisions
           that follow it (or accesses to state protected by a lock the faulter holds). */
        atomic { rcu[f] = 1; if :: write = 0 :: write = 1 fi }   /* RCU.readLock() */
        atomic { v = idx; if :: v == 0 -> goto out :: else fi }  /* index.lookup(address) */
        atomic {                                                 /* sequence.readBegin() */
            s = seq[v];
#ifndef MUTANT_NO_ODD_ABORT
            if :: s & 1 -> goto out :: else fi                   /* abortSequenceOdd */
#endif
        }
        atomic {                                                 /* protection, relaxed */
            if :: write && prot[v] != RW -> goto out :: else fi  /* segfault or abort */
        }
        atomic {
            t = pmd;                                             /* pmd.load(pmdIndex) */
#ifdef FIX_TABLE_LEAK
            if :: t == 0 -> goto out :: else fi                  /* leave it to the classic path */
#else
            if :: t == 0 -> fresh = 2 + f * FAULTS + attempt :: else fi
#endif
        }
#ifndef FIX_TABLE_LEAK
        if
        :: fresh != 0 ->
            atomic {                                             /* installTable: seq_cst CAS */
                if
                :: pmd == 0 -> pmd = fresh; tstate[fresh] = LIVE; t = fresh; mine = 1
                :: else -> t = pmd                               /* loser: never published */
                fi;
                fresh = 0
            }
        :: else
        fi;
#endif
        atomic {
            assert(tstate[t] != FREED);                          /* P4 */
            e = pte[t];                                          /* pte.load(slot) */
            if :: e != NONE -> goto out :: else fi               /* spurious, or COW abort */
        }
        atomic { ptl[t] == 0 -> ptl[t] = 1; assert(tstate[t] != FREED) }  /* tryLock (P4) */
#ifndef MUTANT_NO_PMD_RECHECK
        atomic { if :: pmd != t -> goto abortLocked :: else fi }
#endif
#ifndef MUTANT_NO_REVALIDATE
        atomic { if :: seq[v] != s -> goto abortLocked :: else fi }  /* hasChanged(since:) */
#endif
        atomic {                        /* the entry is only written under the split lock */
            if :: pte[t] != e -> goto abortLocked :: else fi;
            assert(tstate[t] == LIVE);                           /* P1: table still live */
            assert(!(v == V && zapDone));                        /* P1: not behind the zap */
            if :: write -> pte[t] = RW :: else -> pte[t] = RO fi
        }
        unlock(ptl[t]);
        goto out;

abortLocked:
        unlock(ptl[t]);
#ifdef FIX_TABLE_LEAK_UNDO
        if
        :: mine ->
#ifdef MUTANT_UNDO_PMD_LOCK_ONLY
            lock(pmdLock);
#else
            lock(spaceLock);
#endif
            lock(ptl[t]);
            if
            :: pmd == t && pte[t] == NONE ->
                atomic { pmd = 0; tstate[t] = RETIRED; undone = t }  /* retired */
            :: else
            fi;
            unlock(ptl[t]);
#ifdef MUTANT_UNDO_PMD_LOCK_ONLY
            unlock(pmdLock);
#else
            unlock(spaceLock);
#endif
        :: else
        fi;
#endif
out:    skip;
        d_step { rcu[f] = 0; attempt++; v = 0; s = 0; t = 0; e = 0; fresh = 0; write = 0; mine = 0 }
#ifdef FIX_TABLE_LEAK_UNDO
        if                              /* the retired table is freed after a grace period */
        :: undone != 0 ->
            rcu[1 - f] == 0;
            d_step { tstate[undone] = FREED; undone = 0 }
        :: else
        fi;
#endif
    od;
    finished++
}

proctype Writer()
{
    byte t, old;

    /* mprotect(V, PROT_READ), optional */
    if
    :: seq[V]++;                                      /* touch: writeBegin, seq_cst RMW */
       prot[V] = RO;                                  /* setAttributes */
       t = pmd;                                       /* changeProtection: loadOrdered */
       if
       :: t != 0 ->
           lock(ptl[t]);
           if :: pte[t] == RW -> pte[t] = RO :: else fi;
           unlock(ptl[t])
       :: else
       fi;
       seq[V]++;                                      /* finish: writeEnd */
       protDone = 1;
       t = 0
    :: skip
    fi;

    /* munmap(V) */
    atomic { seq[V]++; removed[V] = 1 }               /* touch (seq_cst RMW) + markRemoved */
    idx = 0;                                          /* publish */
    t = pmd;                                          /* zap: loadOrdered */
    if
    :: t != 0 ->
        lock(ptl[t]);
        pte[t] = NONE;
        zapDone = 1;
        unlock(ptl[t])
    :: else -> zapDone = 1
    fi;
    lock(spaceLock);                                  /* freeTables */
    t = pmd;                                          /* loadOrdered */
    if
    :: t != 0 ->
        atomic { old = pmd; pmd = 0 };                /* exchange(0) */
        assert(old != 0);                             /* retire(table:) of a real table */
        assert(tstate[old] == LIVE);                  /* checkInvariant in retire(table:) */
        tstate[old] = RETIRED
    :: else
    fi;
    unlock(spaceLock);
    /* finish: V stays odd; retire.submit() */

    /* mmap(V2) over the hole, optional */
    if
    :: atomic { prot[V2] = RW; idx = V2; v2Mapped = 1 }
    :: skip
    fi;

    /* the retire batch runs after a grace period */
#ifndef MUTANT_NO_GRACE_PERIOD
    rcu[0] == 0;
    rcu[1] == 0;
#endif
    d_step {
        if :: old != 0 -> tstate[old] = FREED :: else fi;   /* RetireList.reclaim() */
        t = 0; old = 0
    }
    finished++
}

/* P2, checked in every state */
active proctype Monitor()
{
end:
    atomic {
        (protDone && !removed[V] && pmd != 0 && pte[pmd] == RW) -> assert(false)
    }
}

init
{
    byte t;
    atomic {
        prot[V] = RW;
        idx = V;
        if
        :: skip                                       /* no PTE table yet */
        :: pmd = T_INIT; tstate[T_INIT] = LIVE
        :: pmd = T_INIT; tstate[T_INIT] = LIVE; pte[T_INIT] = RO
        :: pmd = T_INIT; tstate[T_INIT] = LIVE; pte[T_INIT] = RW
        fi;
        run Faulter(0);
        run Faulter(1);
        run Writer()
    }
    finished == 3;
    /* P3 and P5 */
    d_step {
        if
        :: !v2Mapped ->
            assert(pmd == 0 || pte[pmd] == NONE);
#ifdef CHECK_NO_TABLE_LEAK
            assert(pmd == 0);
#endif
        :: else
        fi;
        t = 1;
        do
        :: t < NT -> assert((tstate[t] != RETIRED && tstate[t] != FREED) || pte[t] == NONE); t++
        :: else -> break
        od
    }
}
