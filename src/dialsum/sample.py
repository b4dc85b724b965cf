"""Synthetic Korean dialogue-summarization data in the competition layout.

Every dialogue is built from a topic scenario with random slots (names, places, times, numbers, masked
PII), and its summary restates those slots, so a model can learn the summary from the dialogue. The
generator uses only ``random.Random(seed)`` and writes with fixed line endings: the same seed gives the
same bytes, which is what lets the embedded sample live in git and be checked for drift.
"""

from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

from .data import josa

NAMES = [
    "김민수",
    "이지은",
    "박서준",
    "최유나",
    "정하늘",
    "강도윤",
    "윤서연",
    "임지호",
    "한예린",
    "오준혁",
    "서민지",
    "신동현",
    "권나래",
    "황태민",
    "송지아",
    "문성호",
]
DAYS = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일", "내일", "모레", "다음 주 월요일"]
TIMES = ["오전 9시", "오전 10시", "오전 11시", "오후 1시", "오후 2시", "오후 3시", "오후 4시", "오후 6시", "저녁 7시"]
FILLERS = ["음, 잠시만요.", "아, 그렇군요.", "네, 알겠습니다.", "글쎄요, 생각해 볼게요.", "어, 정말요?", "그럼요."]


def _hospital(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    name, hosp = r.choice(NAMES), r.choice(["서울내과", "한빛병원", "튼튼정형외과", "밝은안과", "미소치과"])
    symptom = r.choice(["두통", "기침", "허리 통증", "눈 충혈", "치통", "발목 통증", "소화불량"])
    ndays, day, time = r.randint(2, 9), r.choice(DAYS), r.choice(TIMES)
    doctor = r.choice(NAMES)[0]  # surname only: "김 선생님"
    turns = [
        (0, f"안녕하세요, {hosp}입니다. 무엇을 도와드릴까요?"),
        (1, f"안녕하세요. {ndays}일 전부터 {symptom} 때문에 너무 힘들어서 진료를 받고 싶어요."),
        (0, "성함과 연락처를 알려주시겠어요?"),
        (1, f"{josa(name, '이/가')}고요, 전화번호는 #PhoneNumber#입니다."),
        (0, f"{day} {time}에 {doctor} 선생님 진료가 가능합니다. 괜찮으세요?"),
        (1, f"네, {day} {time}에 갈게요. 감사합니다."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {ndays}일 전부터 {symptom} 때문에 {hosp}에 전화해 {day} {time}에 "
        f"{doctor} 선생님 진료를 예약한다. {josa(p[1], '은/는')} 연락처로 #PhoneNumber#를 남긴다."
    )
    return turns, summary


def _restaurant(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    rest = r.choice(["한강식당", "맛나분식", "소담한정식", "바다횟집", "들꽃파스타"])
    n, day, time = r.randint(2, 8), r.choice(DAYS), r.choice(TIMES)
    dish = r.choice(["김치찌개", "불고기", "비빔밥", "회덮밥", "크림파스타", "삼겹살"])
    name = r.choice(NAMES)
    turns = [
        (1, f"{rest}죠? {day} {time}에 {n}명 예약하고 싶은데요."),
        (0, f"네, {day} {time}에 {n}명 가능합니다. 예약자 성함이 어떻게 되세요?"),
        (1, f"{name}입니다. 혹시 {dish}도 미리 주문할 수 있나요?"),
        (0, f"네, {dish} {n}인분 준비해 두겠습니다. 주소는 #Address#로 오시면 됩니다."),
        (1, "좋아요. 고맙습니다."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {rest}에 {day} {time} {n}명 예약을 하고 {dish} {n}인분을 미리 "
        f"주문한다. {josa(p[0], '은/는')} 주소 #Address#를 알려 준다."
    )
    return turns, summary


def _travel(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    city = r.choice(["부산", "제주도", "강릉", "경주", "전주", "여수", "도쿄", "오사카"])
    nights, budget = r.randint(1, 5), r.choice([30, 50, 80, 100, 150, 200])
    transport = r.choice(["기차", "비행기", "버스", "자동차"])
    day = r.choice(DAYS)
    turns = [
        (0, f"이번 휴가 때 {city}에 가 보는 게 어때?"),
        (1, f"좋아. {city}에는 {transport}로 가면 편하겠다. 며칠 있을까?"),
        (0, f"{nights}박 정도면 충분할 것 같아. 예산은 {budget}만 원으로 하자."),
        (1, f"그래, {day}에 출발하자. 숙소는 내가 #Email#로 예약 확인 메일을 받아 둘게."),
        (0, "완벽해. 기대된다!"),
    ]
    summary = (
        f"{josa(p[0], '과/와')} {josa(p[1], '은/는')} {day}에 {josa(transport, '으로/로')} {city}에 가서 "
        f"{nights}박을 지내기로 하고 예산을 {budget}만 원으로 정한다. {josa(p[1], '이/가')} 숙소를 예약한다."
    )
    return turns, summary


def _shopping(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    item = r.choice(["운동화", "겨울 코트", "노트북", "가방", "청바지", "전기밥솥", "무선 이어폰"])
    price = r.choice([3, 5, 8, 12, 15, 25, 49, 99]) * 10000
    discount = r.choice([10, 20, 30, 50])
    color = r.choice(["검은색", "흰색", "파란색", "회색", "빨간색"])
    turns = [
        (1, f"실례합니다, 이 {item} {color}으로 있나요?"),
        (0, f"네, {color} 있습니다. 지금 {discount}퍼센트 할인 중이에요."),
        (1, "원래 가격이 얼마예요?"),
        (0, f"{price:,}원인데 할인하면 {price * (100 - discount) // 100:,}원입니다."),
        (1, f"그럼 {color}으로 살게요. 카드 #CardNumber#로 계산할게요."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {color} {josa(item, '을/를')} {discount}퍼센트 할인된 "
        f"{price * (100 - discount) // 100:,}원에 사고 카드 #CardNumber#로 계산한다."
    )
    return turns, summary


def _office(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    task = r.choice(["분기 보고서", "신제품 발표 자료", "예산안", "고객 설문 분석", "채용 공고"])
    day, time = r.choice(DAYS), r.choice(TIMES)
    boss = r.choice(NAMES)
    turns = [
        (0, f"{task} 언제까지 끝낼 수 있어요?"),
        (1, f"{day} {time}까지는 마무리할 수 있을 것 같습니다."),
        (0, f"좋아요. 끝나면 {boss} 팀장님께도 공유해 주세요."),
        (1, f"네, 완료되면 {boss} 팀장님께 메일로 보내겠습니다."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {josa(task, '을/를')} {day} {time}까지 끝내고 {boss} 팀장에게 "
        f"공유하기로 {josa(p[0], '과/와')} 약속한다."
    )
    return turns, summary


def _school(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    subject = r.choice(["수학", "영어", "과학", "역사", "국어", "음악"])
    score = r.randint(55, 99)
    day = r.choice(DAYS)
    plan = r.choice(["도서관에서 공부하기", "스터디 그룹에 들어가기", "과외를 받기", "매일 문제집을 풀기"])
    turns = [
        (0, f"이번 {subject} 시험 몇 점 받았어?"),
        (1, f"{score}점 받았어. 생각보다 낮아서 속상해."),
        (0, f"다음 시험은 {day}부터 준비하자. {plan} 어때?"),
        (1, f"좋은 생각이야. {day}부터 {plan}로 할게."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {subject} 시험에서 {score}점을 받아 속상해하고, "
        f"{josa(p[0], '과/와')} {day}부터 {plan}로 한다."
    )
    return turns, summary


def _bank(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    amount = r.choice([10, 30, 50, 100, 200, 500])
    kind = r.choice(["적금", "예금", "대출", "환전"])
    months = r.choice([6, 12, 24, 36])
    turns = [
        (1, f"{kind} 상담을 받으러 왔어요."),
        (0, "네, 금액은 얼마로 생각하세요?"),
        (1, f"{amount}만 원이요. 기간은 {months}개월로 하고 싶어요."),
        (0, f"알겠습니다. 계좌번호 #AccountNumber#로 {kind} 신청을 처리해 드릴게요."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} 은행에서 {amount}만 원, {months}개월 {kind} 상담을 받고 {josa(p[0], '이/가')} "
        f"계좌번호 #AccountNumber#로 신청을 처리한다."
    )
    return turns, summary


def _move(r: random.Random, p: list[str]) -> tuple[list[tuple[int, str]], str]:
    rooms, rent = r.randint(1, 4), r.choice([50, 70, 90, 120, 150])
    area = r.choice(["강남", "마포", "분당", "해운대", "수원", "일산"])
    day = r.choice(DAYS)
    turns = [
        (1, f"{area} 쪽에 방 {rooms}개짜리 집을 구하고 있어요."),
        (0, f"월세 {rent}만 원짜리 매물이 있습니다. 주소는 #Address#예요."),
        (1, f"{day}에 직접 보러 갈 수 있을까요?"),
        (0, f"네, {day}에 안내해 드릴게요."),
    ]
    summary = (
        f"{josa(p[1], '은/는')} {area}에서 방 {rooms}개짜리 집을 찾고, {josa(p[0], '은/는')} 월세 "
        f"{rent}만 원 매물을 소개하며 {day}에 #Address#의 집을 보여 주기로 한다."
    )
    return turns, summary


TOPICS = {
    "병원": _hospital,
    "식당": _restaurant,
    "여행": _travel,
    "쇼핑": _shopping,
    "회사": _office,
    "학교": _school,
    "은행": _bank,
    "부동산": _move,
}


def make_dialogue(r: random.Random) -> tuple[str, str, str]:
    """One (dialogue, summary, topic) triple."""
    topic = r.choice(sorted(TOPICS))
    n_speakers = r.choices([2, 3, 4], weights=[6, 3, 1])[0]
    tags = [f"#Person{i + 1}#" for i in range(n_speakers)]
    roles = tags[:2] if r.random() < 0.5 else tags[1::-1]  # who plays the customer varies
    turns, summary = TOPICS[topic](r, roles)
    lines = [f"{roles[s]}: {text}" for s, text in turns]
    for extra in tags[2:]:  # bystanders chip in without changing the facts
        lines.insert(r.randint(1, len(lines)), f"{extra}: {r.choice(FILLERS)}")
    if r.random() < 0.5:
        lines.insert(r.randint(1, len(lines)), f"{r.choice(roles)}: {r.choice(FILLERS)}")
    # Turn order must start with #Person1#, as in the competition data.
    first = lines[0].split(":", 1)[0]
    if first != "#Person1#":
        swap = {first: "#Person1#", "#Person1#": first}
        lines = [_fix_josa(_swap_tags(line, swap)) for line in lines]
        summary = _fix_josa(_swap_tags(summary, swap))
    return "\n".join(lines), summary, topic


_PAIRS = {
    "은": "은/는",
    "는": "은/는",
    "이": "이/가",
    "가": "이/가",
    "을": "을/를",
    "를": "을/를",
    "과": "과/와",
    "와": "과/와",
}
_TAG_JOSA = re.compile(r"(#Person\d+#)(은|는|이|가|을|를|과|와)(?=[\s,.]|$)")


def _fix_josa(text: str) -> str:
    """Re-attach the right particle to each speaker tag (after tags were swapped)."""
    return _TAG_JOSA.sub(lambda m: josa(m.group(1), _PAIRS[m.group(2)]), text)


def _swap_tags(text: str, mapping: dict[str, str]) -> str:
    for i, (a, b) in enumerate(mapping.items()):
        text = text.replace(a, f"\0{i}\0")
    for i, (a, b) in enumerate(mapping.items()):
        text = text.replace(f"\0{i}\0", b)
    return text


def write_sample(out: str | Path, seed: int = 0, n_train: int = 400, n_dev: int = 80, n_test: int = 80) -> dict:
    """Write train/dev/test CSVs under ``out``; returns {split: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["fname", "dialogue"] if split == "test" else ["fname", "dialogue", "summary", "topic"])
        for i in range(n):
            dialogue, summary, topic = make_dialogue(r)
            w.writerow([f"{split}_{i}", dialogue] if split == "test" else [f"{split}_{i}", dialogue, summary, topic])
        path = out / f"{split}.csv"
        tmp = path.with_suffix(".csv.tmp")
        tmp.write_bytes(buf.getvalue().encode("utf-8"))
        tmp.replace(path)
        paths[split] = path
    return paths
